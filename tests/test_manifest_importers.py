"""Every importer on a small corpus in its exact real layout, with audio synthesized by espeak-ng."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from spx.errors import SpxError
from spx.manifests.importers import ImportOptions, import_corpus
from spx.manifests.io import read_manifest

from conftest import run_spx

SENTENCES = {  # id -> (speaker, text)
    "1089-134686-0000": ("1089", "he hoped there would be stew"),
    "1089-134686-0001": ("1089", "stuff it into you"),
    "121-121726-0000": ("121", "also a popular contrivance"),
    "121-121726-0001": ("121", "harangue the tiresome product"),
}


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    """One real espeak-ng WAV (22.05 kHz mono) per sentence."""
    d = tmp_path_factory.mktemp("wavs")
    out = {}
    for uid, (_, text) in SENTENCES.items():
        p = d / f"{uid}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "190", "-w", str(p), text], check=True, capture_output=True)
        out[uid] = p
    return out


def true_duration(p: Path) -> float:
    info = sf.info(str(p))
    return info.frames / info.samplerate


def load(fmt: str, src, **opts) -> list:
    kwargs = {k: opts.pop(k) for k in ("supervisions",) if k in opts}
    return list(import_corpus(fmt, src, ImportOptions(**opts), **kwargs))


# ---------------------------------------------------------------- Kaldi
def write_kaldi(d: Path, wavs: dict[str, Path], utt2dur: bool = True, piped: str | None = None) -> None:
    d.mkdir(parents=True)
    ids = sorted(wavs)
    with (d / "wav.scp").open("w") as fh:
        for uid in ids:
            entry = f"sox {wavs[uid]} -t wav - |" if uid == piped else str(wavs[uid])
            fh.write(f"{uid} {entry}\n")
    (d / "text").write_text("".join(f"{u} {SENTENCES[u][1].upper()}\n" for u in ids))
    (d / "utt2spk").write_text("".join(f"{u} {SENTENCES[u][0]}\n" for u in ids))
    spk2utt: dict[str, list[str]] = {}
    for u in ids:
        spk2utt.setdefault(SENTENCES[u][0], []).append(u)
    (d / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
    if utt2dur:
        (d / "utt2dur").write_text("".join(f"{u} {true_duration(wavs[u]):.4f}\n" for u in ids))


def test_kaldi_with_pipe_and_utt2dur(tmp_path, wavs):
    d = tmp_path / "data" / "train"
    write_kaldi(d, wavs, piped="121-121726-0000")
    utts = {u.id: u for u in load("kaldi", d)}
    assert set(utts) == set(SENTENCES)
    u = utts["121-121726-0000"]
    assert u.audio == f"sox {wavs[u.id]} -t wav - |" and u.is_piped
    for uid, u in utts.items():
        assert u.speaker == SENTENCES[uid][0] and u.text == SENTENCES[uid][1].upper()
        assert abs(u.duration - true_duration(wavs[uid])) < 1e-3


def test_kaldi_pipe_without_durations_needs_utt2dur_or_allow_pipes(tmp_path, wavs):
    d = tmp_path / "k"
    write_kaldi(d, wavs, utt2dur=False, piped="1089-134686-0001")
    with pytest.raises(SpxError) as e:
        load("kaldi", d)
    assert "utt2dur" in e.value.hint and "--allow-pipes" in e.value.hint and "wav.scp:2" in e.value.where
    utts = {u.id: u for u in load("kaldi", d, allow_pipes=True)}  # runs `sox ... |` without a shell
    for uid in SENTENCES:
        assert abs(utts[uid].duration - true_duration(wavs[uid])) < 1e-3


def test_kaldi_segments_and_reco2dur(tmp_path, wavs):
    d = tmp_path / "seg"
    d.mkdir()
    long = sorted(wavs)[0]
    (d / "wav.scp").write_text(f"rec1 {wavs[long]}\n")
    total = true_duration(wavs[long])
    (d / "segments").write_text("rec1-a rec1 0.00 0.50\nrec1-b rec1 0.50 -1\n")
    (d / "reco2dur").write_text(f"rec1 {total}\n")
    (d / "text").write_text("rec1-a he hoped\nrec1-b there would be stew\n")
    (d / "utt2spk").write_text("rec1-a s1\nrec1-b s1\n")
    a, b = load("kaldi", d)
    assert (a.id, a.offset, a.duration, a.text) == ("rec1-a", 0.0, 0.5, "he hoped")
    assert b.offset == 0.5 and abs(b.duration - (total - 0.5)) < 1e-9 and b.speaker == "s1"


def test_kaldi_durations_file_means_audio_is_not_opened(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("u1 /nonexistent/u1.wav\nu2 /nonexistent/u2.flac\n")
    (d / "utt2dur").write_text("u1 1.25\nu2 2.5\n")
    assert [(u.id, u.duration) for u in load("kaldi", d)] == [("u1", 1.25), ("u2", 2.5)]


def test_kaldi_bad_line_points_at_file_and_line(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("u1 /x/u1.wav\n")
    (d / "segments").write_text("u1 u1 0.0\n")
    with pytest.raises(SpxError, match="4 fields") as e:
        load("kaldi", d)
    assert e.value.where.endswith("segments:1")


# ---------------------------------------------------------------- NeMo / SpeechBrain
def test_nemo_jsonl_relative_paths(tmp_path, wavs):
    (tmp_path / "audio").mkdir()
    with (tmp_path / "train_manifest.json").open("w") as fh:
        for uid, p in wavs.items():
            shutil.copy(p, tmp_path / "audio" / p.name)
            fh.write(json.dumps({"audio_filepath": f"audio/{p.name}", "duration": round(true_duration(p), 3),
                                 "text": SENTENCES[uid][1], "lang": "en", "snr": 30}) + "\n")
    utts = load("nemo", tmp_path / "train_manifest.json")
    assert [u.id for u in utts] == list(wavs)  # ids from the file names
    assert all(Path(u.audio).is_file() and u.language == "en" and u.meta == {"snr": 30} for u in utts)


def test_speechbrain_csv_with_data_root(tmp_path, wavs):
    csv_path = tmp_path / "train.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
        for uid, p in wavs.items():
            w.writerow([uid, true_duration(p), f"$data_root/{p.name}", SENTENCES[uid][0], SENTENCES[uid][1].upper()])
    with pytest.raises(SpxError, match=r"\$data_root") as e:
        load("speechbrain_csv", csv_path)
    assert "--data-root" in e.value.hint and e.value.where.endswith("train.csv:2")
    utts = load("speechbrain_csv", csv_path, data_root=str(next(iter(wavs.values())).parent))
    assert [u.id for u in utts] == list(wavs)
    assert all(Path(u.audio).is_file() and u.speaker == SENTENCES[u.id][0] for u in utts)


def test_speechbrain_json(tmp_path, wavs):
    data = {uid: {"wav": str(p), "length": true_duration(p), "duration": true_duration(p), "spk_id": SENTENCES[uid][0],
                  "words": SENTENCES[uid][1]} for uid, p in wavs.items()}
    (tmp_path / "valid.json").write_text(json.dumps(data))
    utts = load("speechbrain_json", tmp_path / "valid.json")
    assert {u.id: u.text for u in utts} == {k: v[1] for k, v in SENTENCES.items()}
    assert all("length" in u.meta for u in utts)


# ---------------------------------------------------------------- LibriSpeech / Common Voice / LJSpeech
def test_librispeech_layout(tmp_path, wavs):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for uid, p in wavs.items():
        spk, chapter, _ = uid.split("-")
        d = root / spk / chapter
        d.mkdir(parents=True, exist_ok=True)
        data, sr = sf.read(str(p))
        sf.write(str(d / f"{uid}.flac"), data, sr)
        with (d / f"{spk}-{chapter}.trans.txt").open("a") as fh:
            fh.write(f"{uid} {SENTENCES[uid][1].upper()}\n")
    utts = load("librispeech", root, workers=2, language="en")
    assert sorted(u.id for u in utts) == sorted(wavs)
    for u in utts:
        assert u.speaker == u.id.split("-")[0] and u.text == SENTENCES[u.id][1].upper() and u.language == "en"
        assert abs(u.duration - true_duration(wavs[u.id])) < 1e-3 and u.sample_rate == 22050 and u.channels == 1


def make_commonvoice(root: Path, wavs: dict[str, Path]) -> Path:
    (root / "clips").mkdir(parents=True)
    rows = []
    for i, (uid, p) in enumerate(wavs.items()):
        name = f"common_voice_en_{i:05d}.mp3"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(p), str(root / "clips" / name)], check=True)
        rows.append([f"client{i % 2}", name, f"s{i}", SENTENCES[uid][1].capitalize() + '. "Quoted"', "2", "0", "twenties",
                     "male", "", "", "en", ""])
    tsv = root / "train.tsv"
    with tsv.open("w") as fh:
        fh.write("client_id\tpath\tsentence_id\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment\n")
        for r in rows:
            fh.write("\t".join(r) + "\n")
    return tsv


def test_commonvoice_mp3_headers(tmp_path, wavs):
    tsv = make_commonvoice(tmp_path / "cv" / "en", wavs)
    utts = load("commonvoice", tsv)
    assert [u.id for u in utts] == [f"common_voice_en_{i:05d}" for i in range(4)]
    for u, p in zip(utts, wavs.values()):
        assert u.language == "en" and u.speaker in ("client0", "client1") and u.text.endswith('"Quoted"')
        assert abs(u.duration - true_duration(p)) < 0.08  # mp3 encoder padding
        assert u.meta["gender"] == "male"


def test_commonvoice_clip_durations_file_means_audio_is_not_opened(tmp_path, wavs):
    tsv = make_commonvoice(tmp_path / "cv" / "en", wavs)
    (tsv.parent / "clip_durations.tsv").write_text(
        "clip\tduration[ms]\n" + "".join(f"common_voice_en_{i:05d}.mp3\t{1000 + i}\n" for i in range(4)))
    shutil.rmtree(tsv.parent / "clips")
    assert [u.duration for u in load("commonvoice", tsv)] == [1.0, 1.001, 1.002, 1.003]


def test_ljspeech_layout(tmp_path, wavs):
    root = tmp_path / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True)
    lines = []
    for i, (uid, p) in enumerate(wavs.items()):
        lid = f"LJ001-{i:04d}"
        shutil.copy(p, root / "wavs" / f"{lid}.wav")
        lines.append(f"LJ001-{i:04d}|{SENTENCES[uid][1]} 1st|{SENTENCES[uid][1]} first")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    utts = load("ljspeech", root)
    assert [u.id for u in utts] == [f"LJ001-{i:04d}" for i in range(4)]
    assert all(u.text.endswith(" first") and u.meta["raw_text"].endswith(" 1st") for u in utts)
    assert abs(utts[0].duration - true_duration(next(iter(wavs.values())))) < 1e-3
    (root / "metadata.csv").write_text("LJ001-0001 no pipes here\n")
    with pytest.raises(SpxError, match="id|text") as e:
        load("ljspeech", root)
    assert e.value.where.endswith("metadata.csv:1")


# ---------------------------------------------------------------- Hugging Face audiofolder
def test_audiofolder_metadata_csv_and_jsonl(tmp_path, wavs):
    root = tmp_path / "ds"
    items = list(wavs.items())
    for split, chunk, kind in (("train", items[:2], "csv"), ("test", items[2:], "jsonl")):
        d = root / split
        (d / "data").mkdir(parents=True)
        rows = []
        for uid, p in chunk:
            shutil.copy(p, d / "data" / p.name)
            rows.append({"file_name": f"data/{p.name}", "transcription": SENTENCES[uid][1], "speaker_id": int(SENTENCES[uid][0])})
        if kind == "csv":
            with (d / "metadata.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        else:
            (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = load("audiofolder", root)
    assert sorted(u.id for u in utts) == sorted([f"train/data/{u}" for u, _ in items[:2]] + [f"test/data/{u}" for u, _ in items[2:]])
    assert all(u.text == SENTENCES[u.id.split("/")[-1]][1] and u.speaker == SENTENCES[u.id.split("/")[-1]][0] for u in utts)


def test_audiofolder_class_folders_give_labels(tmp_path, wavs):
    root = tmp_path / "cls"
    for i, p in enumerate(wavs.values()):
        (root / ("yes" if i % 2 else "no")).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / ("yes" if i % 2 else "no") / p.name)
    utts = load("audiofolder", root)
    assert sorted(u.label for u in utts) == ["no", "no", "yes", "yes"] and all(u.text is None for u in utts)


# ---------------------------------------------------------------- Lhotse
def test_lhotse_recordings_supervisions_and_cuts(tmp_path, wavs):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recs = RecordingSet.from_recordings(Recording.from_file(p, recording_id=uid) for uid, p in wavs.items())
    sups = SupervisionSet.from_segments(
        SupervisionSegment(id=f"{uid}-s", recording_id=uid, start=0.1, duration=0.5, text=SENTENCES[uid][1],
                           speaker=SENTENCES[uid][0], language="English") for uid in wavs)
    recs.to_file(tmp_path / "recordings.jsonl.gz")
    sups.to_file(tmp_path / "supervisions.jsonl.gz")
    utts = load("lhotse", tmp_path / "recordings.jsonl.gz", supervisions=tmp_path / "supervisions.jsonl.gz")
    assert [u.id for u in utts] == [f"{uid}-s" for uid in wavs]
    assert all(u.offset == 0.1 and u.duration == 0.5 and u.sample_rate == 22050 and u.language == "English" for u in utts)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups).truncate(max_duration=0.4, offset_type="start",
                                                                             keep_excessive_supervisions=False)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    from_cuts = load("lhotse", tmp_path / "cuts.jsonl.gz")
    # the supervisions stick out of the truncated cuts, so each cut is one untranscribed 0.4 s utterance
    assert [u.id for u in from_cuts] == [c.id for c in cuts]
    assert all(Path(u.audio).is_file() and u.duration == 0.4 and u.text is None for u in from_cuts)
    with pytest.raises(SpxError, match="RecordingSet"):
        load("lhotse", tmp_path / "recordings.jsonl.gz")


# ---------------------------------------------------------------- the CLI
def test_cli_import_then_validate(tmp_path, wavs):
    d = tmp_path / "kaldi"
    write_kaldi(d, wavs)
    out = tmp_path / "m.jsonl"
    proc = run_spx("manifest", "import", "kaldi", d, out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["utterances"] == 4 and len(read_manifest(out)) == 4
    proc = run_spx("manifest", "validate", out, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True, proc.stdout + proc.stderr
    proc = run_spx("manifest", "import", "nosuchformat", d, out)
    assert proc.returncode == 2 and "not one of" in proc.stderr and "Traceback" not in proc.stderr
