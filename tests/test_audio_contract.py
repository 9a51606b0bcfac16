"""The audio contract (spx/manifests/materialize.py): every form of input audio becomes the same 16 kHz mono samples,
once, in a shared cache; unreadable rows fail the render naming file:line; `validate --features` reports the plan.
Fast: no training."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spx.errors import SpxError
from spx.manifests.io import write_manifest
from spx.manifests.materialize import audio_plan, conform_manifest, decode_utterance, default_cache_dir, materialize
from spx.manifests.schema import Utterance

from conftest import RECIPE, run_spx

RATE = 16000
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("espeak-ng", "sox", "ffmpeg")),
                                reason="needs espeak-ng, sox and ffmpeg (Debian packages)")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict:
    """One espeak-ng sentence in every form the contract covers, plus its 16 kHz mono reference samples."""
    d = tmp_path_factory.mktemp("forms")
    _run("espeak-ng", "-w", str(d / "base22k.wav"), "the quick brown fox jumps over the lazy dog")
    # -D: no dither, so that a lossless form of the reference holds exactly its samples
    _run("sox", "-D", str(d / "base22k.wav"), "-r", "16000", str(d / "ref16k.wav"))
    ref, _ = sf.read(d / "ref16k.wav", dtype="float32")
    _run("sox", "-D", str(d / "ref16k.wav"), "-r", "8000", str(d / "r8k.wav"))
    _run("sox", "-D", str(d / "ref16k.wav"), "-r", "48000", str(d / "r48k.wav"))
    _run("sox", "-D", str(d / "ref16k.wav"), str(d / "ref16k.flac"))
    _run("sox", "-D", str(d / "ref16k.wav"), "-c", "2", str(d / "stereo.wav"))
    _run("sox", "-D", str(d / "ref16k.wav"), str(d / "ref16k.wav"), str(d / "ref16k.wav"), str(d / "long.wav"))
    _run("ffmpeg", "-nostdin", "-v", "error", "-i", str(d / "r48k.wav"), "-b:a", "96k", str(d / "r48k.mp3"))
    _run("ffmpeg", "-nostdin", "-v", "error", "-i", str(d / "ref16k.wav"), "-c:a", "libopus", str(d / "ref.opus"))
    n = len(ref) / RATE
    utts = {
        "wav16k": Utterance("wav16k", str(d / "ref16k.wav"), n),
        "flac16k": Utterance("flac16k", str(d / "ref16k.flac"), n),
        "stereo": Utterance("stereo", str(d / "stereo.wav"), n),
        "segment": Utterance("segment", str(d / "long.wav"), n, offset=n),
        "segment_at_0": Utterance("segment_at_0", str(d / "long.wav"), n),  # Kaldi segments from 0.0
        "pipe": Utterance("pipe", f"sox {d / 'ref16k.wav'} -t wav - |", n),
        "pipe_segment": Utterance("pipe_segment", f"sox {d / 'long.wav'} -t flac - |", n, offset=2 * n),
        "wav8k": Utterance("wav8k", str(d / "r8k.wav"), n),
        "wav22k": Utterance("wav22k", str(d / "base22k.wav"), n),
        "wav48k": Utterance("wav48k", str(d / "r48k.wav"), n),
        "mp3_48k": Utterance("mp3_48k", str(d / "r48k.mp3"), n),
        "opus": Utterance("opus", str(d / "ref.opus"), n),
    }
    return {"dir": d, "ref": ref, "utts": utts}


LOSSLESS_16K = ["wav16k", "flac16k", "stereo", "segment", "segment_at_0", "pipe", "pipe_segment"]
PLANS = {"wav16k": (), "flac16k": (), "stereo": ("channels",), "segment": ("segment",), "segment_at_0": ("segment",), "pipe": ("pipe",),
         "pipe_segment": ("pipe", "segment"), "wav8k": ("rate",), "wav22k": ("rate",), "wav48k": ("rate",),
         "mp3_48k": ("codec", "rate"), "opus": ("codec",)}


def _snr_db(ref: np.ndarray, x: np.ndarray, max_len_diff: int = 1) -> float:
    assert abs(len(ref) - len(x)) <= max_len_diff, (len(ref), len(x))
    n = min(len(ref), len(x))
    return float(10 * np.log10(np.sum(ref[:n] ** 2) / max(np.sum((ref[:n] - x[:n]) ** 2), 1e-20)))


def _materialized(utt: Utterance, cache: Path) -> np.ndarray:
    (row,) = materialize([utt], RATE, cache, progress=False)
    wav, sr = sf.read(row.audio, dtype="float32")
    assert sr == RATE and wav.ndim == 1 and row.offset == 0.0 and row.duration == pytest.approx(len(wav) / RATE)
    assert sf.info(row.audio).subtype == "PCM_16"
    return wav


def test_every_form_has_its_plan(forms):
    assert {k: audio_plan(u, RATE) for k, u in forms["utts"].items()} == PLANS


@pytest.mark.parametrize("form", LOSSLESS_16K)
def test_lossless_forms_give_the_reference_samples_exactly(forms, form, tmp_path):
    assert np.array_equal(_materialized(forms["utts"][form], tmp_path), forms["ref"])
    assert np.array_equal(decode_utterance(forms["utts"][form], RATE), forms["ref"])


@pytest.mark.parametrize("form,min_snr_db", [("wav22k", 30.0), ("wav48k", 30.0)])
def test_other_rates_resample_to_the_reference(forms, form, min_snr_db, tmp_path):
    # sox made these forms (and the 16 kHz reference) from the same audio; soxr resamples them back independently
    assert _snr_db(forms["ref"], _materialized(forms["utts"][form], tmp_path)) > min_snr_db


def test_8k_keeps_the_reference_below_4k(forms, tmp_path):
    import soxr

    wav = _materialized(forms["utts"]["wav8k"], tmp_path)
    band_limited = soxr.resample(soxr.resample(forms["ref"], RATE, 8000), 8000, RATE)
    assert _snr_db(band_limited, wav) > 30.0


@pytest.mark.parametrize("form", ["mp3_48k", "opus"])
def test_lossy_codecs_equal_their_own_decode(forms, form, tmp_path):
    # the codec's own decode by ffmpeg, resampled by sox: an independent path to the same samples
    utt = forms["utts"][form]
    out = tmp_path / "own.wav"
    _run("ffmpeg", "-nostdin", "-v", "error", "-i", utt.audio, "-ac", "1", "-c:a", "pcm_f32le", str(tmp_path / "f.wav"))
    _run("sox", "-D", str(tmp_path / "f.wav"), "-r", str(RATE), "-b", "16", str(out))
    own, _ = sf.read(out, dtype="float32")
    wav = _materialized(utt, tmp_path / "cache")
    # decoders may differ in the codec's padding at the end (a few samples), not in the timing of the samples
    assert _snr_db(own, wav, max_len_diff=32) > 40.0  # measured: mp3 81 dB, opus 45 dB
    assert _snr_db(forms["ref"], wav, max_len_diff=32) > 15.0  # and it is still the sentence


def test_cache_is_reused_and_written_atomically(forms, tmp_path):
    utts = list(forms["utts"].values()) * 2  # 22 rows: the process pool path; duplicates share one entry
    stats: dict = {}
    first = materialize(utts, RATE, tmp_path, workers=2, progress=False, stats=stats)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == len(forms["utts"]) and not [p for p in files if p.name.startswith(".")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again: dict = {}
    second = materialize(utts, RATE, tmp_path, workers=2, progress=False, stats=again)
    assert again == {"reused": len(utts)} and [u.audio for u in second] == [u.audio for u in first]
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert sum(stats.values()) == len(utts)


def test_cache_key_follows_the_source_file(forms, tmp_path):
    src = tmp_path / "a.wav"
    shutil.copy(forms["utts"]["wav48k"].audio, src)
    utt = Utterance("a", str(src), 1.0)
    (before,) = materialize([utt], RATE, tmp_path / "cache", progress=False)
    os.utime(src, ns=(1, 1))  # a changed file (same path) is decoded again
    (after,) = materialize([utt], RATE, tmp_path / "cache", progress=False)
    assert before.audio != after.audio


def _manifest(path: Path, utts: list[Utterance]) -> Path:
    write_manifest(path, utts)
    return path


def test_conform_manifest_points_every_row_at_readable_audio(forms, tmp_path):
    src = _manifest(tmp_path / "mixed.jsonl", list(forms["utts"].values()))
    summary = conform_manifest(src, tmp_path / "out.jsonl", RATE, tmp_path / "cache", progress=False)
    assert summary["rows"] == 12 and summary["as_is"] == 2 and summary["materialized"] == 10
    assert summary["reasons"] == {"pipe": 2, "codec": 2, "rate": 4, "channels": 1, "segment": 3}
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()[1:]]
    for row in out:
        info = sf.info(row["audio"])
        assert info.samplerate == RATE and info.channels == 1 and "offset" not in row
    assert [r["id"] for r in out] == list(forms["utts"])


@pytest.mark.parametrize("bad,message", [
    (Utterance("gone", "/nonexistent/x.wav", 1.0), "not found"),
    (Utterance("pipe_fails", "sox /nonexistent/y.wav -t wav - |", 1.0), "failed"),
    (Utterance("not_audio", "__NOT_AUDIO__", 1.0), "cannot read audio header"),
])
def test_unreadable_row_fails_naming_file_line_and_id(forms, tmp_path, bad, message):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    if bad.audio == "__NOT_AUDIO__":
        bad.audio = str(junk)
    src = _manifest(tmp_path / "m.jsonl", [forms["utts"]["wav16k"], forms["utts"]["wav48k"], bad])
    with pytest.raises(SpxError) as err:
        conform_manifest(src, tmp_path / "out.jsonl", RATE, tmp_path / "cache", progress=False)
    assert err.value.where == f"{src}:4 (row {bad.id!r})" and message in err.value.message
    assert not (tmp_path / "out.jsonl").exists()


def test_render_fails_before_training_and_run_dir_manifests_conform(forms, tmp_path):
    from spx.runner import render_run
    from spx.spec import load_spec

    utts = [Utterance(u.id, u.audio, u.duration, u.offset, text="the quick brown fox") for u in forms["utts"].values()]
    good = _manifest(tmp_path / "good.jsonl", utts)
    spec = load_spec(RECIPE, [f"data.train={good}", f"data.valid={good}", f"data.test={good}"])
    rd = render_run(spec, "espnet", tmp_path / "bench" / "runs" / "cell", force=True)
    audio = json.loads((rd.path / "manifests" / "audio.json").read_text())
    assert audio["manifests"]["train.jsonl"]["materialized"] == 10
    assert audio["manifests"]["train.jsonl"]["cache"] == str(default_cache_dir())
    data = rd.path / "native" / "data" / "train"
    assert not (data / "segments").exists() and not [ln for ln in (data / "wav.scp").read_text().splitlines()
                                                      if ln.rstrip().endswith("|")]
    bad = _manifest(tmp_path / "bad.jsonl", [*utts, Utterance("gone", "/nonexistent/x.wav", 1.0, text="x")])
    spec = load_spec(RECIPE, [f"data.train={good}", f"data.valid={good}", f"data.test={bad}"])
    with pytest.raises(SpxError) as err:
        render_run(spec, "nemo", tmp_path / "bench" / "runs" / "cell2", force=True)
    assert err.value.where == f"{bad}:14 (row 'gone')"
    assert json.loads((tmp_path / "bench" / "runs" / "cell2" / "status.json").read_text())["state"] == "failed"


def test_validate_features_reports_the_plan(forms, tmp_path):
    src = _manifest(tmp_path / "mixed.jsonl", list(forms["utts"].values()))
    proc = run_spx("manifest", "validate", src, "--features", RECIPE, "--json")
    contract = json.loads(proc.stdout)["audio_contract"]
    assert contract["sample_rate"] == RATE and contract["as_is"] == 2 and contract["materialized"] == 10
    assert contract["reasons"] == {"pipe": 2, "codec": 2, "rate": 4, "channels": 1, "segment": 3}
    assert contract["examples"][0] == {"line": 4, "id": "stereo", "reasons": ["channels"],
                                       "action": contract["examples"][0]["action"]}
    text = run_spx("manifest", "validate", src, "--features", RECIPE)
    assert "2 rows read as is, 10 materialized (2 pipe, 2 codec, 4 rate, 1 channels, 3 segment)" in text.stdout
    assert f"{src}:5: segment: segment: cut the segment;" in text.stdout


def test_kaldiio_reading_the_pipe_gives_the_materialized_samples(forms, tmp_path):
    """ESPnet reads a piped wav.scp through kaldiio (a shell, every epoch); spx materializes the pipe instead.
    Both ways give the same samples, so the choice changes no feature."""
    kaldiio = pytest.importorskip("kaldiio")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"pipe {forms['utts']['pipe'].audio}\n")
    rate, samples = kaldiio.load_scp(str(scp))["pipe"]
    assert rate == RATE and np.array_equal(samples.astype(np.float32) / 32768, _materialized(forms["utts"]["pipe"], tmp_path))


def test_segments_of_one_piped_recording_run_its_pipe_once(forms, tmp_path):
    """Kaldi `segments` over a piped wav.scp entry: the rows come in a row and share one run of the pipe."""
    import sys

    runs = tmp_path / "runs.txt"
    script = tmp_path / "cat_wav.py"
    script.write_text("import sys\nopen(sys.argv[2], 'a').write('ran\\n')\n"
                      "sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())\n")
    pipe = f"{sys.executable} {script} {forms['dir'] / 'ref16k.wav'} {runs} |"
    segments = [Utterance(f"seg{i}", pipe, 0.4, offset=0.4 * i) for i in range(3)]
    out = materialize(segments, 16000, tmp_path / "cache", workers=1, progress=False)
    assert runs.read_text().count("ran") == 1
    for i, u in enumerate(out):
        start = int(round(0.4 * i * 16000))
        expected = forms["ref"][start:start + 6400]
        got = sf.read(u.audio, dtype="float32")[0]
        assert np.allclose(got, expected, atol=1 / 32768)


def test_noise_clips_for_augmentation_follow_the_contract_too(forms, tmp_path):
    """NeMo mixes augmentation.noise clips into the training audio: a piped or 48 kHz clip reaches it materialized."""
    from spx.runner import render_run
    from spx.spec import load_spec

    utts = [Utterance(u.id, u.audio, u.duration, u.offset, text="the quick brown fox")
            for u in (forms["utts"]["wav16k"], forms["utts"]["flac16k"])]
    speech = _manifest(tmp_path / "speech.jsonl", utts)
    noise = _manifest(tmp_path / "noise.jsonl", [forms["utts"]["pipe"], forms["utts"]["wav48k"]])
    spec = load_spec(RECIPE, [f"data.train={speech}", f"data.valid={speech}", f"data.test={speech}",
                              f"augmentation.noise.manifest={noise}"])
    rd = render_run(spec, "nemo", tmp_path / "runs" / "cell", force=True)
    assert json.loads((rd.path / "manifests" / "audio.json").read_text())["manifests"]["noise.jsonl"]["materialized"] == 2
    native = [json.loads(line) for line in (rd.path / "native" / "noise.json").read_text().splitlines()]
    assert [sf.info(r["audio_filepath"]).samplerate for r in native] == [RATE, RATE]
    assert not any(r["audio_filepath"].rstrip().endswith("|") for r in native)
