#!/usr/bin/env bash
# Debian packages the tests and the demo-corpus generator need. Idempotent; uses sudo when not root.
set -euo pipefail
PACKAGES=(espeak-ng flite festival sox libsox-fmt-all ffmpeg slurm-wlm munge chromium)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
