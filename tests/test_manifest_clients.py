"""The exported native files are read by each toolkit's own reader (real clients, not our parser)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spx.manifests.exporters import export_speechbrain_json, convert_manifest
from spx.manifests.io import read_manifest

from conftest import DEMO, REPO


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The demo train set in all four native formats, written by the CLI in one pass."""
    out = tmp_path_factory.mktemp("native")
    convert_manifest(DEMO / "train.jsonl", {"nemo": out / "train_nemo.json", "speechbrain_csv": out / "train.csv",
                                            "kaldi": out / "data" / "train"})
    export_speechbrain_json(read_manifest(DEMO / "train.jsonl"), out / "train_sb.json")
    return out


def test_lhotse_loads_the_kaldi_dir(exported):
    from lhotse.kaldi import load_kaldi_data_dir

    recordings, supervisions, _ = load_kaldi_data_dir(exported / "data" / "train", sampling_rate=16000)
    utts = {u.id: u for u in read_manifest(DEMO / "train.jsonl")}
    id_map = dict(line.split(" ", 1) for line in (exported / "data" / "train" / "spx_id_map").read_text().splitlines())
    assert len(recordings) == len(supervisions) == len(utts) == 240
    for sup in supervisions:
        u = utts[id_map[sup.id]]
        assert sup.text == u.text and abs(sup.duration - u.duration) < 1e-3
        assert sup.speaker == u.speaker  # demo speaker names are already Kaldi-safe
        assert recordings[sup.recording_id].sources[0].source == u.audio


def test_nemo_reads_the_jsonl_with_its_own_manifest_reader(exported):
    # NeMo's import is slow and chatty: read in a child process and hand back what NeMo parsed
    code = ("import json, sys; from nemo.collections.common.parts.preprocessing.manifest import item_iter; "
            "print(json.dumps([{k: it[k] for k in ('audio_file', 'duration', 'text', 'offset', 'speaker', 'lang')} "
            "for it in item_iter(sys.argv[1])]))")
    proc = subprocess.run([sys.executable, "-c", code, str(exported / "train_nemo.json")], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    items = json.loads(proc.stdout.strip().splitlines()[-1])
    utts = read_manifest(DEMO / "train.jsonl")
    assert len(items) == len(utts) == 240
    for item, u in zip(items, utts):
        assert (item["audio_file"], item["duration"], item["text"], item["speaker"], item["lang"]) == \
            (u.audio, u.duration, u.text, u.speaker, u.language)
        assert item["offset"] is None


def test_speechbrain_reads_the_csv_and_json_with_its_own_loaders(exported):
    # In a child process: speechbrain's lazy modules break hypothesis' module scan if imported here
    code = ("import json, sys; from speechbrain.dataio.dataio import load_data_csv, load_data_json; "
            "print(json.dumps([load_data_csv(sys.argv[1]), load_data_json(sys.argv[2])]))")
    proc = subprocess.run([sys.executable, "-c", code, str(exported / "train.csv"), str(exported / "train_sb.json")],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])

    utts = {u.id: u for u in read_manifest(DEMO / "train.jsonl")}
    for data in loaded:
        assert set(data) == set(utts)
        for uid, row in data.items():
            u = utts[uid]
            assert row["wav"] == u.audio and float(row["duration"]) == u.duration
            assert row["wrd"] == u.text and row["spk_id"] == u.speaker
