"""The preparation of an ESPnet TTS run, done by the `tts_train` step in its own process before training (one
espnet2 import for both; `python -m spx.adapters.espnet.steps.tts_prepare RUN_DIR` runs it alone): the Kaldi-style data
dirs (wav.scp, text, utt2spk, utt2sid) and the feature statistics and shape files, by ESPnet's own entry points
(tts_train or, for VITS, gan_tts_train --collect_stats; aggregate_stats_dirs) run in this one process with the argv
lists render wrote to native/tts_commands.json.

FastSpeech2 first runs its duration teacher (tts_inference --use_teacher_forcing true on train and valid) and puts
its durations into the data dirs (`durations`), checked to cover every token and to sum to each utterance's frame
count as ESPnet requires; collect_stats then also extracts the token-averaged pitch and energy.

Audio that is not already a whole file at tts.sample_rate (other rate, a segment, a piped command) is written
as 16-bit WAV at tts.sample_rate under native/tts_data/wav/ first, as ESPnet's format_wav_scp would.
"""
from __future__ import annotations

import json
from pathlib import Path

from spx.adapters.common import child
from spx.adapters.espnet.steps.common import run_native, start
from spx.adapters.espnet.helpers import TTS_COMMANDS, TTS_DATA, TTS_STATS
from spx.manifests import read_manifest
from spx.yamlio import atomic_write_json, atomic_write_text

DONE = "native/tts_prepared.json"  # written last: a step killed during the preparation redoes it


def write_data_dir(rd, manifest: str, split: str, sample_rate: int, speakers: dict[str, int], lowercase: bool) -> None:
    import soundfile as sf

    out = rd / TTS_DATA / split
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


def frame_count(n_samples: int, mel: dict) -> int:
    """Frames of ESPnet's fbank (Stft, center=True) for n_samples: what teacher durations must sum to."""
    pad = mel["n_fft"] // 2
    return (n_samples + 2 * pad - mel["n_fft"]) // mel["hop_length"] + 1


def read_kaldi(path: Path) -> dict[str, str]:
    rows = (line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r[0]: (r[1] if len(r) > 1 else "") for r in rows}


def install_durations(rd, teacher_out: Path, split: str, mel: dict) -> None:
    """The teacher's durations -> native/tts_data/<split>/durations, after checking each utterance has one per token
    (+ <sos/eos>) summing to its frame count (ESPnet's token averaging and length regulator assume exactly that)."""
    import soundfile as sf

    data = rd / TTS_DATA / split
    found = teacher_out / "durations/durations"
    if not found.exists():
        raise SystemExit(f"the duration teacher wrote no {found} (is it an attention model run with teacher forcing?)")
    durations = {k: [int(x) for x in v.split()] for k, v in read_kaldi(found).items()}
    texts, wavs = read_kaldi(data / "text"), read_kaldi(data / "wav.scp")
    missing = sorted(set(texts) - set(durations))
    if missing:
        raise SystemExit(f"the duration teacher gave no durations for {len(missing)} {split} utterance(s) "
                         f"(first: {missing[0]!r}); see {teacher_out}")
    bad = []
    for utt, text in texts.items():
        tokens = len(text)  # char tokens: one per character, a space is <space>
        frames = frame_count(sf.info(wavs[utt]).frames, mel)
        d = durations[utt]
        if len(d) != tokens + 1 or sum(d) != frames:
            bad.append(f"{utt}: {len(d)} durations for {tokens} tokens + <sos/eos>, summing to {sum(d)} for "
                       f"{frames} frames")
    if bad:
        raise SystemExit(f"{len(bad)} {split} utterance(s) have teacher durations that do not match their tokens "
                         f"and frames, which ESPnet FastSpeech2 requires (does the teacher use this job's tokens, "
                         f"mel settings and reduction factor 1?):\n  " + "\n  ".join(bad[:5]))
    atomic_write_text(data / "durations", "".join(f"{u} {' '.join(map(str, durations[u]))}\n" for u in sorted(texts)))


def run_teacher(rd, native: dict, device: str) -> None:
    for split in ("train", "valid"):
        argv = native["commands"][f"teacher_durations_{split}"] + ["--ngpu", "1" if device == "cuda" else "0"]
        run_native(argv)
        install_durations(rd, Path(argv[argv.index("--output_dir") + 1]), split, native["mel"])
        child.progress(phase="prepare", done=f"teacher durations ({split})")


def is_prepared(rd) -> bool:
    return (rd / DONE).exists() or "tts_prepare" in rd.completed_steps()  # the latter: a run dir from an older spx


def prepare(spec, rd) -> None:
    """Run the preparation in this process (cwd must be the run dir: the native argv lists are relative to it)."""
    native = json.loads((rd / TTS_COMMANDS).read_text())
    speakers = native["speakers"]
    for split, manifest in (("train", spec.data.train), ("valid", spec.data.valid)):
        write_data_dir(rd, manifest, split, spec.tts.sample_rate, speakers, spec.tokenizer.lowercase)
    child.progress(phase="prepare", done="data dirs")
    if native["family"] == "fastspeech2":
        child.set_threads(spec)
        run_teacher(rd, native, child.pick_device(spec))

    for name in ("collect_stats", "aggregate_stats_dirs"):
        run_native(native["commands"][name])  # module first: espnet2.bin.tts_train or gan_tts_train (VITS)
        child.progress(phase="prepare", done=name)
    wanted = ["feats"] + (["pitch", "energy"] if native["family"] == "fastspeech2" else [])
    for feat in wanted:
        if not (rd / f"{TTS_STATS}/train/{feat}_stats.npz").exists():
            raise SystemExit(f"collect_stats wrote no {TTS_STATS}/train/{feat}_stats.npz")
    atomic_write_json(rd / DONE, {"commands": [*(["teacher_durations"] if native["family"] == "fastspeech2" else []),
                                               "collect_stats", "aggregate_stats_dirs"]})


def main(run_dir: str) -> None:
    spec, rd = start(run_dir)
    prepare(spec, rd)


if __name__ == "__main__":
    child.main_guard(main)
