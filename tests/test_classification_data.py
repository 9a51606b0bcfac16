"""Classification data: the importers of the common layouts (a folder per class as speech_commands ships it, a CSV/TSV
of file,label, Hugging Face audiofolder), their malformed inputs (one line naming file:line, exit 2), the class
balance of `spx manifest stats` and `spx manifest split --stratify label`. Real WAV files, read back by soundfile."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spx.manifests.io import read_manifest

from conftest import run_spx
from test_malformed_inputs import assert_one_line_error

SR = 16000


def wav(path: Path, seconds: float, hz: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.2 * np.sin(2 * np.pi * hz * t)).astype("float32"), SR, subtype="PCM_16")
    return path


def imported(*args: str) -> None:
    proc = run_spx("manifest", "import", *map(str, args))
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- a folder per class (speech_commands)
def speech_commands(root: Path) -> dict[str, float]:
    """speech_commands' layout: <label>/<speaker>_nohash_<n>.wav, _background_noise_/, the two split lists, a LICENSE."""
    durations = {}
    for label, speakers in (("yes", ("a1", "b2", "c3", "d4")), ("no", ("a1", "b2", "c3")), ("up", ("e5", "f6"))):
        for i, spk in enumerate(speakers):
            seconds = 0.5 + 0.1 * i
            wav(root / label / f"{spk}_nohash_0.wav", seconds)
            durations[f"{label}/{spk}_nohash_0"] = seconds
    wav(root / "_background_noise_" / "white_noise.wav", 2.0)
    (root / "_background_noise_" / "README.md").write_text("noise for augmentation\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    (root / "validation_list.txt").write_text("yes/b2_nohash_0.wav\nno/b2_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/c3_nohash_0.wav\nno/c3_nohash_0.wav\nup/f6_nohash_0.wav\n")
    return durations


def test_class_folders_speech_commands_splits(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    durations = speech_commands(root)
    imported("class_folders", root, tmp_path / "data", "--splits")
    splits = {name: {u.id: u for u in read_manifest(tmp_path / "data" / f"{name}.jsonl")} for name in ("train", "valid", "test")}
    assert sorted(splits["valid"]) == ["no/b2_nohash_0", "yes/b2_nohash_0"]
    assert sorted(splits["test"]) == ["no/c3_nohash_0", "up/f6_nohash_0", "yes/c3_nohash_0"]
    assert sorted(splits["train"]) == ["no/a1_nohash_0", "up/e5_nohash_0", "yes/a1_nohash_0", "yes/d4_nohash_0"]
    for utts in splits.values():
        for uid, u in utts.items():
            assert u.label == uid.split("/")[0] and u.speaker == uid.split("/")[1].split("_")[0]
            assert u.duration == pytest.approx(durations[uid], abs=1e-4) and u.sample_rate == SR
            assert "split" not in u.meta  # the file it is in says it

    # one manifest: every row keeps its split in meta, the background noise is not a class
    imported("speech_commands", root, tmp_path / "all.jsonl")
    utts = read_manifest(tmp_path / "all.jsonl")
    assert len(utts) == len(durations) and {u.label for u in utts} == {"yes", "no", "up"}
    assert Counter(u.meta["split"] for u in utts) == {"train": 4, "valid": 2, "test": 3}


def test_class_folders_without_lists_has_no_split(tmp_path):
    root = tmp_path / "kws"
    wav(root / "on" / "x.wav", 0.4)
    wav(root / "off" / "y.flac", 0.6)
    imported("folder_per_class", root, tmp_path / "m.jsonl")
    utts = {u.id: u for u in read_manifest(tmp_path / "m.jsonl")}
    assert {k: (u.label, u.meta) for k, u in utts.items()} == {"on/x": ("on", {}), "off/y": ("off", {})}
    proc = run_spx("manifest", "import", "class_folders", root, tmp_path / "out", "--splits")
    assert_one_line_error(proc, "", "has no split")
    assert not (tmp_path / "out" / "train.jsonl").exists()  # nothing half-written


# ---------------------------------------------------------------- CSV / TSV of file,label
def test_label_csv_and_tsv(tmp_path):
    clips = tmp_path / "esc" / "audio"
    for i, name in enumerate(("1-100-A-0.wav", "1-101-A-1.wav", "2-102-A-0.wav")):
        wav(clips / name, 0.3 + 0.2 * i)
    meta = tmp_path / "esc" / "meta"
    meta.mkdir()
    (meta / "esc50.csv").write_text("filename,fold,target,category\n../audio/1-100-A-0.wav,1,0,dog\n"
                                    "../audio/1-101-A-1.wav,1,1,rooster\n../audio/2-102-A-0.wav,2,0,dog\n")
    imported("label_csv", meta / "esc50.csv", tmp_path / "esc.jsonl")  # default columns: filename, category
    utts = read_manifest(tmp_path / "esc.jsonl")
    assert [(u.label, u.meta["fold"], round(u.duration, 3)) for u in utts] == [("dog", "1", 0.3), ("rooster", "1", 0.5),
                                                                                ("dog", "2", 0.7)]
    assert all(Path(u.audio).is_file() for u in utts)

    (tmp_path / "list.tsv").write_text("clip\tword\tsplit\tspeaker\nesc/audio/1-100-A-0.wav\tgo\ttrain\ts1\n"
                                       "esc/audio/1-101-A-1.wav\tstop\tvalidation\ts2\n")
    imported("tsv", tmp_path / "list.tsv", tmp_path / "split", "--splits", "--file-column", "clip", "--label-column", "word")
    train, valid = (read_manifest(tmp_path / "split" / f"{n}.jsonl") for n in ("train", "valid"))
    assert [(u.label, u.speaker) for u in train] == [("go", "s1")] and [u.label for u in valid] == ["stop"]
    assert not (tmp_path / "split" / "test.jsonl").exists()


# ---------------------------------------------------------------- Hugging Face audiofolder
def test_audiofolder_split_folders_of_class_folders(tmp_path):
    root = tmp_path / "hf"
    for split, n in (("train", 2), ("validation", 1), ("test", 1)):
        for label in ("cat", "dog"):
            for i in range(n):
                wav(root / split / label / f"{label}{i}.wav", 0.25)
    imported("audiofolder", root, tmp_path / "data", "--splits")
    got = {name: sorted((u.id, u.label) for u in read_manifest(tmp_path / "data" / f"{name}.jsonl"))
           for name in ("train", "valid", "test")}
    assert got["valid"] == [("validation/cat/cat0", "cat"), ("validation/dog/dog0", "dog")]
    assert len(got["train"]) == 4 and {lab for _, lab in got["train"]} == {"cat", "dog"}
    assert [lab for _, lab in got["test"]] == ["cat", "dog"]


def test_audiofolder_metadata_labels(tmp_path):
    root = tmp_path / "hf"
    wav(root / "train" / "a.wav", 0.3)
    wav(root / "train" / "b.wav", 0.4)
    (root / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.wav", "label": 3}) + "\n" +
                                                   json.dumps({"file_name": "b.wav", "label": "7"}) + "\n")
    imported("audiofolder", root, tmp_path / "m.jsonl")
    utts = read_manifest(tmp_path / "m.jsonl")
    assert [(u.id, u.label, u.meta) for u in utts] == [("train/a", "3", {"split": "train"}), ("train/b", "7", {"split": "train"})]


# ---------------------------------------------------------------- malformed inputs: one line, file:line, exit 2
def bad_corpus(tmp_path: Path, case: str) -> tuple[list[str], str, str]:
    """(import arguments, where the error must point, words it must say) for one malformed corpus."""
    good = wav(tmp_path / "clips" / "good.wav", 0.3)
    csv_file = tmp_path / "labels.csv"
    if case == "csv label column missing":
        csv_file.write_text(f"file,speaker\n{good},s1\n")
        return ["label_csv", str(csv_file)], f"{csv_file}:1", "no label column"
    if case == "csv named label column missing":
        csv_file.write_text(f"file,label\n{good},yes\n")
        return ["label_csv", str(csv_file), "--label-column", "word"], f"{csv_file}:1", "no label column 'word'"
    if case == "csv empty label":
        csv_file.write_text(f"file,label\n{good},yes\n{good},  \n")
        return ["label_csv", str(csv_file)], f"{csv_file}:3", "empty label"
    if case == "csv missing file":
        csv_file.write_text("file,label\nclips/good.wav,yes\nclips/gone.wav,no\n")
        return ["label_csv", str(csv_file)], f"{csv_file}:3", "audio file not found"
    if case == "csv unreadable audio":
        (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
        csv_file.write_text("file,label\nclips/good.wav,yes\nclips/broken.wav,no\n")
        return ["label_csv", str(csv_file)], f"{csv_file}:3", "cannot read audio header"
    if case == "class folder unreadable audio":
        root = tmp_path / "kws"
        wav(root / "yes" / "a.wav", 0.3)
        (root / "no").mkdir()
        (root / "no" / "b.wav").write_bytes(b"\x00" * 64)
        return ["class_folders", str(root)], str(root / "no" / "b.wav"), "cannot read audio header"
    if case == "testing list names a missing file":
        root = tmp_path / "kws"
        wav(root / "yes" / "a.wav", 0.3)
        (root / "testing_list.txt").write_text("yes/a.wav\nyes/gone.wav\n")
        return ["class_folders", str(root)], f"{root / 'testing_list.txt'}:2", "is listed but is not a file"
    if case == "audiofolder empty label":
        root = tmp_path / "hf"
        wav(root / "a.wav", 0.3)
        (root / "metadata.csv").write_text("file_name,label\na.wav,yes\na.wav,\n")
        return ["audiofolder", str(root)], f"{root / 'metadata.csv'}:3", "empty label"
    if case == "audiofolder missing file":
        root = tmp_path / "hf"
        wav(root / "a.wav", 0.3)
        (root / "metadata.jsonl").write_text('{"file_name": "a.wav", "label": "x"}\n{"file_name": "b.wav", "label": "y"}\n')
        return ["audiofolder", str(root)], f"{root / 'metadata.jsonl'}:2", "audio file not found"
    if case == "audiofolder label column missing":
        root = tmp_path / "hf"
        wav(root / "a.wav", 0.3)
        (root / "metadata.csv").write_text("file_name,text\na.wav,hello\n")
        return ["audiofolder", str(root), "--label-column", "label"], f"{root / 'metadata.csv'}:1", "no label column"
    raise AssertionError(case)


MALFORMED = ["csv label column missing", "csv named label column missing", "csv empty label", "csv missing file",
             "csv unreadable audio", "class folder unreadable audio", "testing list names a missing file",
             "audiofolder empty label", "audiofolder missing file", "audiofolder label column missing"]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_classification_corpora(tmp_path, case):
    args, where, words = bad_corpus(tmp_path, case)
    out = tmp_path / "out.jsonl"
    assert_one_line_error(run_spx("manifest", "import", *args, out), f"{where}: ", words)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))  # nothing half-written


# ---------------------------------------------------------------- stats and stratified split
def labelled_manifest(tmp_path: Path, counts: dict[str, int]) -> Path:
    clip = wav(tmp_path / "c.wav", 0.5)
    rows = [{"id": f"{label}-{i}", "audio": str(clip), "duration": 1.0 + (label == "yes"), "label": label}
            for label, n in counts.items() for i in range(n)]
    p = tmp_path / "all.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_stats_show_the_class_balance(tmp_path):
    p = labelled_manifest(tmp_path, {"yes": 30, "no": 10, "_silence_": 5})
    s = json.loads(run_spx("manifest", "stats", p, "--json", check=True).stdout)
    assert s["class_balance"] == [
        {"label": "yes", "utterances": 30, "hours": round(60 / 3600, 4), "share": round(30 / 45, 4)},
        {"label": "no", "utterances": 10, "hours": round(10 / 3600, 4), "share": round(10 / 45, 4)},
        {"label": "_silence_", "utterances": 5, "hours": round(5 / 3600, 4), "share": round(5 / 45, 4)}]
    assert s["unlabelled"] == 0
    text = run_spx("manifest", "stats", p, check=True, env={"COLUMNS": "120"}).stdout
    assert "class balance" in text and "3 classes" in text
    table = [[c.strip() for c in line.strip("│").split("│")][:4] for line in text.splitlines()
             if line.startswith("│ ") and line.split("│")[1].strip() in counts_of(s)]
    assert table == [["yes", "30", "0.0167", "66.7"], ["no", "10", "0.0028", "22.2"], ["_silence_", "5", "0.0014", "11.1"]]


def counts_of(stats: dict) -> dict[str, int]:
    return {b["label"]: b["utterances"] for b in stats["class_balance"]}


def test_split_stratified_by_label(tmp_path):
    counts = {"yes": 40, "no": 20, "up": 10, "down": 3}
    p = labelled_manifest(tmp_path, counts)
    per = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        proc = run_spx("manifest", "split", p, out, "--ratios", "0.6,0.2,0.2", "--seed", str(seed), "--stratify", "label",
                       "--json", check=True)
        assert json.loads(proc.stdout)["counts"] == {"train": 44, "valid": 15, "test": 14}
        per[name] = {s: [u.id for u in read_manifest(out / f"{s}.jsonl")] for s in ("train", "valid", "test")}
    assert per["a"] == per["b"] and per["a"] != per["c"]  # deterministic with the seed
    for split, share in (("train", 0.6), ("valid", 0.2), ("test", 0.2)):
        got = Counter(uid.split("-")[0] for uid in per["a"][split])
        for label, n in counts.items():
            assert abs(got[label] - share * n) < 1, (split, label, got[label])  # each label in the ratios
    assert sorted(sum(per["a"].values(), [])) == sorted(f"{k}-{i}" for k, n in counts.items() for i in range(n))


def test_split_stratified_refusals(tmp_path):
    p = labelled_manifest(tmp_path, {"yes": 3})
    with p.open("a") as fh:
        fh.write(json.dumps({"id": "nolabel", "audio": "c.wav", "duration": 1.0}) + "\n")
    assert_one_line_error(run_spx("manifest", "split", p, tmp_path / "o", "--stratify", "label"), f"{p}: ", "has no label")
    assert not (tmp_path / "o").exists()
    assert_one_line_error(run_spx("manifest", "split", p, tmp_path / "o", "--stratify", "label", "--speaker-disjoint"),
                          "", "cannot be combined")
