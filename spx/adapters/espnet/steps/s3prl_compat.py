"""s3prl 0.4.18 (the `frontend: s3prl` of ESPnet's ssl_ctc) with torchaudio 2.11, in spx's ESPnet child processes.

`import s3prl.nn` imports every upstream s3prl has (s3prl/hub.py), and two of those import statements use torchaudio
APIs that torchaudio 2.9 removed (s3prl#575):
  torchaudio.set_audio_backend("sox_io")          s3prl.dataio.dataset.load_audio, upstream/byol_s: module level.
      torchaudio has no I/O backend to choose any more, so the call has nothing to set: a no-op stands in.
  from torchaudio.sox_effects import apply_effects_tensor
                                                  upstream/mos_prediction (and load_audio's optional sox effects).
      Used only by s3prl's MOS-prediction upstream and its own dataset loader, never by the hf_*_custom experts
      ESPnet's frontend loads: a stand-in module whose functions raise a clear error if anything ever calls them.
Nothing in site-packages is changed; `apply()` patches the torchaudio module of this process only, and only where
the name is missing (a torchaudio that still has them is left as it is).

Run as a module, it is the wrapper native/run.sh puts in front of an espnet2 entry point, so ESPnet alone (plus this
file) reproduces the run: `python -m spx.adapters.espnet.steps.s3prl_compat espnet2.bin.asr_train --config ...`.
"""
from __future__ import annotations

import runpy
import sys
import types


def _removed(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"torchaudio.sox_effects.{name} was removed in torchaudio 2.9; spx's s3prl compatibility "
                           "shim only lets s3prl import (spx/adapters/espnet/steps/s3prl_compat.py)")
    call.__name__ = name
    return call


def apply() -> list[str]:
    """Install the shims this torchaudio needs (idempotent); returns what was shimmed."""
    import torchaudio

    done = []
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None
        done.append("torchaudio.set_audio_backend")
    if "torchaudio.sox_effects" not in sys.modules:
        try:
            import torchaudio.sox_effects  # noqa: F401  (a torchaudio that still has it)
        except ImportError:
            stand_in = types.ModuleType("torchaudio.sox_effects")
            stand_in.__doc__ = "spx stand-in: torchaudio.sox_effects was removed in torchaudio 2.9"
            for name in ("apply_effects_tensor", "apply_effects_file", "effect_names"):
                setattr(stand_in, name, _removed(name))
            sys.modules["torchaudio.sox_effects"] = stand_in
            torchaudio.sox_effects = stand_in
            done.append("torchaudio.sox_effects")
    return done


def build_frontend(pretrained: str, upstream: str, multilayer_feature: bool = False):
    """ESPnet's S3prlFrontend as ssl_ctc's config builds it (upstream hf_wav2vec2_custom / hf_hubert_custom,
    path_or_url = `pretrained`), in eval mode, after the shims: what the parity test compares with Transformers."""
    from spx.adapters.espnet.steps.lazy_imports import defer_unused_imports

    defer_unused_imports()  # s3prl imports espnet2's tasks: the same deferred imports as the child steps
    apply()
    from espnet2.asr.frontend.s3prl import S3prlFrontend

    frontend = S3prlFrontend(fs=16000, frontend_conf={"upstream": upstream, "path_or_url": pretrained},
                             multilayer_feature=multilayer_feature)
    return frontend.eval()


def main(argv: list[str]) -> None:
    """`python -m spx.adapters.espnet.steps.s3prl_compat <module> [args...]`: the shims, then the module as __main__."""
    if not argv:
        raise SystemExit("usage: python -m spx.adapters.espnet.steps.s3prl_compat <module> [args...]")
    apply()
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
