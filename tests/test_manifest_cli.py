"""`spx manifest validate|stats|split|prepare|export` through the real CLI, on real audio."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spx.manifests.io import read_manifest, write_manifest
from spx.manifests.schema import Utterance

from conftest import DEMO, run_spx


def demo_rows(n: int = 6) -> list[Utterance]:
    return read_manifest(DEMO / "train.jsonl")[:n]


def test_validate_lists_every_problem_with_its_line(tmp_path):
    good = demo_rows(3)  # read_manifest made their audio paths absolute
    lines = ['{"spx_manifest": 1}']
    lines += [json.dumps(u.to_json_dict()) for u in good]                                            # 2-4 fine
    lines.append(json.dumps({**good[0].to_json_dict()}))                                              # 5 duplicate id
    lines.append(json.dumps({**good[1].to_json_dict(), "id": "missing", "audio": "/nope/x.flac"}))   # 6 missing audio
    lines.append(json.dumps({**good[1].to_json_dict(), "id": "long", "duration": 9.0}))               # 7 duration mismatch
    lines.append(json.dumps({**good[1].to_json_dict(), "id": "sr", "sample_rate": 8000}))             # 8 sample rate
    lines.append(json.dumps({**good[1].to_json_dict(), "id": "empty", "text": "  "}))                 # 9 empty text
    lines.append(json.dumps({**good[1].to_json_dict(), "id": "neg", "duration": -1}))                 # 10 negative duration
    lines.append(json.dumps({**good[1].to_json_dict(), "id": "oov", "text": "héllo wörld"}))          # 11 out of vocabulary
    lines.append('{"id": "broken", ')                                                                  # 12 invalid JSON
    (tmp_path / "audio").mkdir()
    text_path = tmp_path / "m.jsonl"
    body = ("\n".join(lines) + "\n").encode() + b'{"id": "latin1", "text": "caf\xe9"}\n'              # 13 not UTF-8
    good_unreadable = tmp_path / "audio" / "bad.flac"
    good_unreadable.write_bytes(b"not audio at all")
    body += (json.dumps({**good[2].to_json_dict(), "id": "unreadable", "audio": "audio/bad.flac"}) + "\n").encode()  # 14
    text_path.write_bytes(body)
    proc = run_spx("manifest", "validate", text_path, "--vocab", "abcdefghijklmnopqrstuvwxyz'", "--json")
    assert proc.returncode == 2, proc.stderr
    report = json.loads(proc.stdout)
    got = {(p["line"], p["kind"]) for p in report["problems"]}
    assert got == {(5, "duplicate_id"), (6, "missing_audio"), (7, "duration_mismatch"), (8, "sample_rate_mismatch"),
                   (9, "empty_text"), (10, "bad_duration"), (11, "out_of_vocabulary"), (12, "invalid_json"), (13, "not_utf8"),
                   (14, "unreadable_audio")}, report["problems"]
    assert report["ok"] is False and report["utterances"] == 10
    assert proc.stderr.count("\n") <= 2 and "Traceback" not in proc.stderr
    text = run_spx("manifest", "validate", text_path)
    assert text.returncode == 2 and f"{text_path}:7: duration_mismatch" in text.stdout


def test_validate_demo_is_clean_and_sample_rate_is_checked():
    assert run_spx("manifest", "validate", DEMO / "test.jsonl", "--sample-rate", "16000", "--require-text").returncode == 0
    proc = run_spx("manifest", "validate", DEMO / "test.jsonl", "--sample-rate", "22050", "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["problem_counts"] == {"sample_rate_mismatch": 40}


def test_stats_json():
    proc = run_spx("manifest", "stats", DEMO / "test.jsonl", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    utts = read_manifest(DEMO / "test.jsonl")
    assert s["utterances"] == 40 and s["speakers"] == len({u.speaker for u in utts})
    assert abs(s["hours"] - sum(u.duration for u in utts) / 3600) < 1e-3
    assert sum(b["utterances"] for b in s["duration_histogram"]) == 40
    assert set(s["characters"]) == set("".join(u.text for u in utts))
    assert "duration histogram" in run_spx("manifest", "stats", DEMO / "test.jsonl").stdout


def test_stats_quality_scores_the_corpus_with_dnsmos(tmp_path):
    proc = run_spx("manifest", "stats", DEMO / "test.jsonl", "--quality", "--max-utts", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    q = json.loads(proc.stdout)["quality"]
    assert q["utterances_scored"] == 4 and q["utterances_total"] == 40 and len(q["per_utt"]) == 4
    assert 1.0 <= q["dnsmos_ovrl"]["min"] <= q["dnsmos_ovrl"]["mean"] <= q["dnsmos_ovrl"]["max"] <= 5.0
    assert "speechmos" in q["versions"]
    bad = run_spx("manifest", "stats", DEMO / "test.jsonl", "--max-utts", "4")
    assert bad.returncode == 2 and "--max-utts only applies with --quality" in bad.stderr


def test_split_seeded_and_speaker_disjoint(tmp_path):
    for name in ("a", "b"):
        proc = run_spx("manifest", "split", DEMO / "train.jsonl", tmp_path / name, "--seed", "7", "--speaker-disjoint", "--json")
        assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)["counts"]
    assert sum(counts.values()) == 240 and all(counts.values())
    parts = {n: read_manifest(tmp_path / "a" / f"{n}.jsonl") for n in ("train", "valid", "test")}
    speakers = {n: {u.speaker for u in us} for n, us in parts.items()}
    assert not (speakers["train"] & speakers["valid"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["valid"] & speakers["test"])
    for n in parts:  # same seed, same split
        assert (tmp_path / "a" / f"{n}.jsonl").read_bytes() == (tmp_path / "b" / f"{n}.jsonl").read_bytes()
    proc = run_spx("manifest", "split", DEMO / "train.jsonl", tmp_path / "c", "--ratios", "0.5,0.5", "--json")
    assert json.loads(proc.stdout)["counts"] == {"train": 120, "valid": 120}
    bad = run_spx("manifest", "split", DEMO / "train.jsonl", tmp_path / "d", "--ratios", "0.5,0.6")
    assert bad.returncode == 2 and "sum to 1" in bad.stderr


def test_export_kaldi_and_more_in_one_pass(tmp_path):
    proc = run_spx("manifest", "export", "espnet", DEMO / "valid.jsonl", tmp_path / "data" / "valid",
                   "--also", "nemo=" + str(tmp_path / "valid.json"), "--also", "speechbrain-csv=" + str(tmp_path / "valid.csv"))
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "data" / "valid" / "wav.scp").read_text().splitlines()) == 30
    assert len((tmp_path / "valid.json").read_text().splitlines()) == 30
    assert len((tmp_path / "valid.csv").read_text().splitlines()) == 31


@pytest.fixture(scope="module")
def raw_corpus(tmp_path_factory) -> Path:
    """Utterances as a user might have them: 22.05 kHz stereo, quiet, a second of silence around the speech;
    one long sentence and one file of silence only."""
    d = tmp_path_factory.mktemp("raw")
    rows = []
    texts = ["turn on the light", "open the door", "please open all the windows of the living room and the kitchen", None]
    for i, text in enumerate(texts):
        wav = d / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text or "silence"], check=True, capture_output=True)
        speech, sr = sf.read(str(wav), dtype="float32")
        speech = 0.05 * speech / np.abs(speech).max() if text else np.zeros_like(speech)
        silence = np.zeros(sr, dtype="float32")
        mono = np.concatenate([silence, speech, silence])
        sf.write(str(d / f"raw{i}.wav"), np.stack([mono, 0.5 * mono], axis=1), sr)
        rows.append(Utterance(f"utt{i}", f"raw{i}.wav", len(mono) / sr, text=text))
    write_manifest(d / "raw.jsonl", rows, relative_to_manifest=True)
    return d


def test_prepare_resample_mono_loudness_trim_filter_and_resume(tmp_path, raw_corpus):
    out = tmp_path / "prepared"
    args = ["manifest", "prepare", raw_corpus / "raw.jsonl", out, "--sample-rate", "16000", "--mono", "--loudness", "-23",
            "--trim", "--max-duration", "2.5", "--workers", "2", "--json"]
    proc = run_spx(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["input"], summary["written"], summary["too_long"], summary["no_speech"]) == (4, 2, 1, 1), summary
    utts = read_manifest(out / "raw.jsonl")
    assert [u.id for u in utts] == ["utt0", "utt1"]
    import torch
    import torchaudio.functional as AF

    raw = {u.id: u for u in read_manifest(raw_corpus / "raw.jsonl")}
    for u in utts:
        data, sr = sf.read(u.audio, dtype="float32", always_2d=True)
        assert sr == 16000 and data.shape[1] == 1 and u.sample_rate == 16000 and u.channels == 1
        assert abs(u.duration - len(data) / sr) < 1e-4
        assert u.duration < raw[u.id].duration - 1.5  # most of the 2 s of silence is gone
        lufs = float(AF.loudness(torch.from_numpy(data.T.copy()), sr))
        assert abs(lufs - (-23)) < 1.0, lufs
    # resumable: a second run reuses every finished file and writes the same manifest
    first = {p.name: p.stat().st_mtime_ns for p in (out / "audio").glob("*.flac")}
    again = run_spx(*args)
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] == 2
    assert first == {p.name: p.stat().st_mtime_ns for p in (out / "audio").glob("*.flac")}
    assert read_manifest(out / "raw.jsonl") == utts
    # other settings into the same folder: refused, not mixed
    other = run_spx("manifest", "prepare", raw_corpus / "raw.jsonl", out, "--sample-rate", "8000", "--no-progress")
    assert other.returncode == 2 and "other settings" in other.stderr and "Traceback" not in other.stderr


def test_prepare_reports_unreadable_audio(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    write_manifest(tmp_path / "m.jsonl", [Utterance("u1", str(tmp_path / "bad.wav"), 1.0)])
    proc = run_spx("manifest", "prepare", tmp_path / "m.jsonl", tmp_path / "out", "--workers", "1", "--no-progress")
    assert proc.returncode == 2 and "'u1'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "m.jsonl").exists()
