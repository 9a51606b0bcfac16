"""Child step `tts_prepare`: the Kaldi-style data dirs (wav.scp, text, utt2spk, utt2sid) and the feature statistics
and shape files, by ESPnet's own entry points (tts_train or, for VITS, gan_tts_train --collect_stats;
aggregate_stats_dirs) run in this one process with the argv lists render wrote to native/tts_commands.json.

Audio that is not already a whole file at tts.sample_rate (other rate, a segment, a piped command) is written
as 16-bit WAV at tts.sample_rate under native/tts_data/wav/ first, as ESPnet's format_wav_scp would.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from spx.adapters.common import child
from spx.adapters.espnet.tts import DATA
from spx.manifests import read_manifest


def write_data_dir(rd, manifest: str, split: str, sample_rate: int, speakers: dict[str, int], lowercase: bool) -> None:
    import soundfile as sf

    out = rd / DATA / split
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows = sorted(read_manifest(manifest), key=lambda u: u.id)  # Kaldi files are sorted by utterance id
    wav_scp, text, utt2spk, utt2sid = [], [], [], []
    for u in rows:
        cleaned = child.clean_transcript(u.text or "", lowercase)
        if not cleaned:
            raise SystemExit(f"{manifest}: row {u.id!r} has no text to speak (text {u.text!r})")
        path = u.audio
        if u.is_piped or u.offset or sf.info(u.audio).samplerate != sample_rate:
            path = str(out / "wav" / f"{u.id}.wav")
            sf.write(path, child.load_audio(u, sample_rate), sample_rate, subtype="PCM_16")
        wav_scp.append(f"{u.id} {path}")
        text.append(f"{u.id} {cleaned}")
        utt2spk.append(f"{u.id} {u.speaker or u.id}")
        if speakers:
            utt2sid.append(f"{u.id} {speakers[u.speaker]}")
    for name, lines in (("wav.scp", wav_scp), ("text", text), ("utt2spk", utt2spk), ("utt2sid", utt2sid)):
        if lines:
            (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(run_dir: str) -> None:
    spec, rd = child.load_run(run_dir)
    os.chdir(rd.path)  # the native argv lists are relative to the run dir
    native = json.loads((rd / "native/tts_commands.json").read_text())
    speakers = native["speakers"]
    for split, manifest in (("train", spec.data.train), ("valid", spec.data.valid)):
        write_data_dir(rd, manifest, split, spec.tts.sample_rate, speakers, spec.tokenizer.lowercase)
    child.progress(phase="prepare", done="data dirs")

    for name in ("collect_stats", "aggregate_stats_dirs"):
        argv = native["commands"][name]  # module first: espnet2.bin.tts_train or gan_tts_train (VITS)
        print("# native: python -m " + " ".join(argv), file=sys.stderr, flush=True)
        importlib.import_module(argv[0]).main(cmd=argv[1:])
        child.progress(phase="prepare", done=name)
    if not Path(rd / "native/tts_stats/train/feats_stats.npz").exists():
        raise SystemExit("collect_stats wrote no native/tts_stats/train/feats_stats.npz")


if __name__ == "__main__":
    child.main_guard(main)
