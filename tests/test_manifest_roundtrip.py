"""Property tests: spx -> X -> spx is exact for every exporter (and for the spx format itself)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spx.errors import SpxError
from spx.manifests.exporters import (EXPORTERS, convert, convert_manifest, export_kaldi, export_nemo, export_speechbrain_csv,
                                     export_speechbrain_json, kaldi_utt_id)
from spx.manifests.importers import ImportOptions, import_corpus
from spx.manifests.io import read_manifest, write_manifest
from spx.manifests.schema import Utterance

# Any Unicode but lone surrogates (not encodable as UTF-8) and NUL (no CSV reader takes it).
CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
TEXT = st.text(CHARS, max_size=12)
# Audio paths: absolute (so no resolution applies), no line breaks or edge whitespace (no Kaldi wav.scp could hold
# them; the exporter refuses them, tested below), no '$' (SpeechBrain expands $variables in paths).
PATH_CHARS = st.characters(exclude_categories=("Cs", "Zl", "Zp", "Cc"), exclude_characters="$\x85")
AUDIO = st.builds(lambda s: "/data/" + s.strip() + ".wav", st.text(PATH_CHARS, max_size=10))
JSON_VALUE = st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
POSITIVE = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)


@st.composite
def utterances(draw) -> Utterance:
    return Utterance(
        id=draw(st.text(CHARS, min_size=1, max_size=12)), audio=draw(AUDIO), duration=draw(POSITIVE),
        offset=draw(st.just(0.0) | POSITIVE), text=draw(st.none() | TEXT), speaker=draw(st.none() | TEXT),
        language=draw(st.none() | TEXT), label=draw(st.none() | TEXT),
        sample_rate=draw(st.none() | st.integers(1, 10**6)), channels=draw(st.none() | st.integers(1, 64)),
        meta=draw(st.dictionaries(TEXT, JSON_VALUE, max_size=3)),
    )


UTTS = st.lists(utterances(), min_size=1, max_size=8, unique_by=lambda u: u.id)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def by_id(utts) -> list[Utterance]:
    return sorted(utts, key=lambda u: u.id)


def reimport(fmt: str, path: Path) -> list[Utterance]:
    return list(import_corpus(fmt, path, ImportOptions(workers=1)))


@SETTINGS
@given(UTTS)
def test_spx_format_roundtrip(tmp_path, utts):
    write_manifest(tmp_path / "m.jsonl", utts)
    assert read_manifest(tmp_path / "m.jsonl") == utts


@SETTINGS
@given(UTTS)
def test_nemo_roundtrip(tmp_path, utts):
    export_nemo(utts, tmp_path / "nemo.json")
    assert reimport("nemo", tmp_path / "nemo.json") == utts


@SETTINGS
@given(UTTS)
def test_speechbrain_csv_roundtrip(tmp_path, utts):
    export_speechbrain_csv(utts, tmp_path / "sb.csv")
    assert reimport("speechbrain_csv", tmp_path / "sb.csv") == utts


@SETTINGS
@given(UTTS)
def test_speechbrain_json_roundtrip(tmp_path, utts):
    export_speechbrain_json(utts, tmp_path / "sb.json")
    assert reimport("speechbrain_json", tmp_path / "sb.json") == utts


@SETTINGS
@given(UTTS)
def test_kaldi_roundtrip(tmp_path, utts):
    out = tmp_path / "kaldi"
    try:
        export_kaldi(utts, out)
    except SpxError as exc:  # only when two distinct ids really share one Kaldi id
        kids = [kaldi_utt_id(u.id, u.speaker) for u in utts]
        assert "map to the Kaldi id" in exc.message and len(set(kids)) < len(kids)
        return
    back = reimport("kaldi", out)
    assert by_id(back) == by_id(utts)
    # Kaldi's own rules: every table sorted by id in C order, spk2utt consistent with utt2spk
    for name in ("wav.scp", "text", "utt2spk", "utt2dur", "spk2utt"):
        keys = [line.split(" ", 1)[0].encode() for line in (out / name).read_text(encoding="utf-8").splitlines()]
        assert keys == sorted(keys) and len(keys) == len(set(keys)), name
    utt2spk = dict(line.split() for line in (out / "utt2spk").read_text().splitlines())
    spk2utt = {line.split()[0]: line.split()[1:] for line in (out / "spk2utt").read_text().splitlines()}
    assert {(u, s) for s, us in spk2utt.items() for u in us} == set(utt2spk.items())
    assert all(kid.startswith(spk + "-") or kid == spk for kid, spk in utt2spk.items())


@settings(SETTINGS, max_examples=15)
@given(UTTS)
def test_one_pass_convert_matches_single_exports(tmp_path, utts):
    """convert() (one pass, several sinks) and the parallel byte-range convert_manifest() write the same bytes."""
    ids = [kaldi_utt_id(u.id, u.speaker) for u in utts]
    if len(set(ids)) < len(ids):
        return
    write_manifest(tmp_path / "m.jsonl", utts)
    for fmt in ("nemo", "speechbrain_csv"):
        EXPORTERS[fmt](utts, tmp_path / f"single.{fmt}")
    convert(utts, {"nemo": tmp_path / "one.nemo", "speechbrain_csv": tmp_path / "one.csv"})
    convert_manifest(tmp_path / "m.jsonl", {"nemo": tmp_path / "par.nemo", "speechbrain_csv": tmp_path / "par.csv",
                                             "kaldi": tmp_path / "par_kaldi"}, workers=3)
    export_kaldi(utts, tmp_path / "single_kaldi")
    for a, b, c in (("single.nemo", "one.nemo", "par.nemo"), ("single.speechbrain_csv", "one.csv", "par.csv")):
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes() == (tmp_path / c).read_bytes()
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur", "spx_id_map"):
        assert (tmp_path / "single_kaldi" / name).read_bytes() == (tmp_path / "par_kaldi" / name).read_bytes(), name


def test_kaldi_refuses_unwritable_audio_path(tmp_path):
    with pytest.raises(SpxError, match="wav.scp"):
        export_kaldi([Utterance("a", "/x/with newline\n.wav", 1.0)], tmp_path / "k")
    assert not (tmp_path / "k").exists() and not list(tmp_path.glob(".k.*"))  # nothing half-written


def test_kaldi_ids_are_safe_unique_and_mapped(tmp_path):
    utts = [Utterance("a b", "/a.wav", 1.0, speaker="spk 1"), Utterance("a_b", "/b.wav", 1.0, speaker="spk 1"),
            Utterance("x/y", "/c.wav", 2.0, offset=0.5)]
    export_kaldi(utts, tmp_path / "k")
    id_map = dict(line.split(" ", 1) for line in (tmp_path / "k" / "spx_id_map").read_text().splitlines())
    assert sorted(id_map.values()) == ["a b", "a_b", "x/y"]
    assert all(kid.replace("-", "").replace("_", "").replace(".", "").isalnum() for kid in id_map)
    assert (tmp_path / "k" / "segments").exists()
    assert by_id(reimport("kaldi", tmp_path / "k")) == by_id(utts)
