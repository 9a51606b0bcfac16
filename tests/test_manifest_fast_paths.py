"""The fast paths of manifest conversion give exactly what the reference code gives.

The reader parses rows with msgspec and leaves every line it rejects to the reference reader (json.loads +
Utterance.from_dict); the exporters format lines directly instead of json.dumps / csv.writer. Each is checked
against its reference on generated input, and the Kaldi finish (segments, spk2utt, parallel parts) on the
cases the generated manifests rarely reach.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spx.errors import SpxError
from spx.manifests.exporters import (_NOT_ONE_LINE, _kaldi_representable, convert_manifest, export_kaldi, kaldi_utt_id, nemo_lines,
                                     nemo_row, speechbrain_csv_fields, speechbrain_csv_lines)
from spx.manifests.importers import ImportOptions, import_corpus
from spx.manifests.io import _parse_line, iter_manifest, iter_rows, write_manifest
from spx.manifests.schema import FIELDS, Utterance

from test_manifest_roundtrip import CHARS, UTTS, by_id, utterances

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Row values of every kind, valid or not: the two readers must agree on each line built from them.
ODD_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "0", "-1.5", "1" + "0" * 400, "16000.0",
                               "1E5", "5e-324", "true", "false", "null"])
JSON_TEXT = st.text(CHARS, max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False))
ESCAPED = st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"a\\u0000b"', '"\\u2028"', '""', '"\\/"'])
VALUE = (st.integers(-10**6, 10**6).map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
         | ODD_NUMBERS | JSON_TEXT | ESCAPED
         | st.sampled_from(['{}', '{"a": [1, {"b": null}]}', '[1]', '{"a": 1, "a": 2}']))
KEYS = st.sampled_from(["id", "audio", "duration", "offset", "text", "speaker", "language", "label", "sample_rate",
                        "channels", "meta", "wav", "spx_manifest"])


@st.composite
def manifest_lines(draw) -> bytes:
    """A valid row with 0-3 fields set to values of any kind (so most rows are valid or wrong in one field)."""
    fields = {"id": draw(st.text(CHARS, min_size=1, max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False))),
              "audio": draw(st.sampled_from(['"/a.wav"', '"rel/a.wav"', '"cmd a |"', '"s3://b/a.wav"'])),
              "duration": draw(st.floats(1e-3, 1e4).map(repr))}
    for key in draw(st.lists(KEYS, max_size=3)):
        fields[key] = draw(VALUE)
    items = [f"{json.dumps(k)}: {v}" for k, v in fields.items()]
    if draw(st.booleans()):
        items.append(f'"id": {draw(JSON_TEXT)}')  # a duplicate key: the last one counts, in both readers
    return ("{" + ", ".join(draw(st.permutations(items))) + "}" + draw(st.sampled_from(["", " ", "\r"]))).encode()


def reference(raw: bytes, p: Path, lineno: int):
    try:
        return _parse_line(raw, p, lineno)
    except SpxError as exc:
        return ("error", exc.one_line())


EDGE_VALUES = ["null", "true", "false", "0", "-0", "0.0", "-0.0", "1", "-1", "1.5", "-1.5", "16000", "16000.0", "16000.5",
               "1e999", "-1e999", "1e-400", "5e-324", "NaN", "Infinity", "1" + "0" * 400, "1" + "0" * 5000, '""', '" "',
               '"x"', '"\\ud800"', '"\\ud83d\\ude00"', '"a\\u0000b"', '"\u2028"', "[]", "[1]", "{}", '{"a": null}',
               '{"a": NaN}', '{"a": 1, "a": 2}', '{"a": [' * 3 + "]}" * 3]


def test_fast_reader_agrees_with_the_reference_reader_on_every_field_and_edge_value(tmp_path):
    p = tmp_path / "m.jsonl"
    base = {"id": '"u1"', "audio": '"/a.wav"', "duration": "1.5"}
    checked = accepted = 0
    for key in ("id", "audio", "duration", "offset", "text", "speaker", "language", "label", "sample_rate", "channels",
                "meta", "wav", "spx_manifest"):
        for value in EDGE_VALUES:
            raw = ("{" + ", ".join(f'"{k}": {v}' for k, v in {**base, key: value}.items()) + "}\n").encode()
            expected = reference(raw, p, 2)
            try:
                got = list(iter_rows([raw], p, resolve_audio=False, first_lineno=2))
                got = got[0] if got else None
                if got is not None and not isinstance(got, Utterance):
                    accepted += 1
                    got = Utterance(*(getattr(got, f) for f in FIELDS))
            except SpxError as exc:
                got = ("error", exc.one_line())
            assert got == expected, raw
            checked += 1
    assert checked == 13 * len(EDGE_VALUES) and accepted > 50  # the fast path did decide most valid rows


@SETTINGS
@given(st.lists(manifest_lines(), min_size=1, max_size=6))
def test_fast_reader_agrees_with_the_reference_reader(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    expected = []
    for lineno, raw in enumerate(lines, 1):
        got = reference(raw + b"\n", p, lineno)
        if got is not None:
            expected.append(got)
        if isinstance(got, tuple):
            break  # the reader stops at the first bad row
    for utt in expected:
        if isinstance(utt, Utterance) and not utt.audio.startswith("/") and "://" not in utt.audio and not utt.audio.rstrip().endswith("|"):
            utt.audio = str(p.resolve().parent / utt.audio)
    read: list = []
    try:
        for utt in iter_manifest(p):
            read.append(utt)
    except SpxError as exc:
        read.append(("error", exc.one_line()))
    assert read == expected
    assert all(type(u) is Utterance and type(u.duration) is float and type(u.offset) is float and type(u.meta) is dict
               for u in read if not isinstance(u, tuple))


@SETTINGS
@given(st.lists(utterances(), min_size=1, max_size=8))
def test_nemo_lines_are_json_dumps_of_nemo_row(utts):
    assert nemo_lines(utts) == "".join(json.dumps(nemo_row(u), ensure_ascii=False) + "\n" for u in utts)


@SETTINGS
@given(st.lists(utterances(), min_size=1, max_size=8), st.sampled_from(["", ",", '"', "\r", "\n", ' "a,b"\r\n']))
def test_speechbrain_csv_lines_are_what_csv_writer_writes(utts, special):
    utts[0].text = (utts[0].text or "") + special  # the rows csv.writer must quote
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(speechbrain_csv_fields(u) for u in utts)
    assert speechbrain_csv_lines(utts) == buf.getvalue()


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=6) | st.text(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000ab", max_size=6))
def test_kaldi_representable_fast_check_matches_the_regex(s):
    assert _kaldi_representable(s) == (_NOT_ONE_LINE.search(s) is None)


@settings(SETTINGS, max_examples=40)
@given(UTTS)
def test_kaldi_sink_ids_are_kaldi_utt_id(tmp_path, utts):
    kids = [kaldi_utt_id(u.id, u.speaker) for u in utts]
    if len(set(kids)) < len(kids):
        return
    export_kaldi(utts, tmp_path / "k")
    written = [line.split(" ", 1)[0] for line in (tmp_path / "k" / "utt2spk").read_text().splitlines()]
    assert written == sorted(kids, key=str.encode)


def reimport_kaldi(d: Path) -> list[Utterance]:
    return by_id(import_corpus("kaldi", d, ImportOptions(workers=1)))


def test_spk2utt_when_speakers_interleave_in_id_order(tmp_path):
    """Speakers 'a' and 'a-b': ids 'a-a', 'a-b-x', 'a-c' sort with a-b's between a's, so spk2utt needs a second sort."""
    utts = [Utterance(uid, f"/{uid}.wav", 1.0, speaker=spk) for uid, spk in
            [("c", "a"), ("x", "a-b"), ("a", "a"), ("y", "a-b"), ("z", "b"), ("solo", None)]]
    export_kaldi(utts, tmp_path / "k")
    spk2utt = (tmp_path / "k" / "spk2utt").read_text().splitlines()
    assert spk2utt == ["a a-a a-c", "a-b a-b-x a-b-y", "b b-z", "solo solo"]
    assert reimport_kaldi(tmp_path / "k") == by_id(utts)


def test_kaldi_id_collision_is_one_error(tmp_path):
    utts = [Utterance("a-b", "/1.wav", 1.0, speaker="a"), Utterance("b", "/2.wav", 1.0, speaker="a")]
    with pytest.raises(SpxError, match="two utterances map to the Kaldi id 'a-b'"):
        export_kaldi(utts, tmp_path / "k")
    assert not (tmp_path / "k").exists() and not list(tmp_path.glob(".k.*"))  # nothing half-written


@pytest.mark.parametrize("workers", [1, 3])
def test_segments_mode_from_a_later_row_in_any_part(tmp_path, workers):
    """Only late rows have offsets: earlier rows (and whole parts without offsets) get segments from utt2dur."""
    utts = [Utterance(f"u{i:04d}", f"/r{i % 7}.wav", 1.0 + i / 8, speaker=f"s{i % 3}", text=f"t {i}") for i in range(9000)]
    for u in utts[8000::97]:
        u.offset = 2.5
    write_manifest(tmp_path / "m.jsonl", utts)
    convert_manifest(tmp_path / "m.jsonl", {"kaldi": tmp_path / "k"}, workers=workers)
    export_kaldi(utts, tmp_path / "single")
    for name in ("wav.scp", "segments", "text", "utt2spk", "spk2utt", "utt2dur", "spx_id_map"):
        assert (tmp_path / "k" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    segments = (tmp_path / "k" / "segments").read_text().splitlines()
    assert len(segments) == len(utts)
    assert "s0-u0000 s0-u0000 0.0 1.0" in segments
    assert reimport_kaldi(tmp_path / "k") == by_id(utts)


@settings(SETTINGS, max_examples=20)
@given(UTTS, st.integers(2, 4))
def test_parallel_conversion_is_the_single_process_conversion(tmp_path, utts, workers):
    write_manifest(tmp_path / "m.jsonl", utts)
    outs = {}
    for n in (1, workers):
        d = tmp_path / f"w{n}"
        targets = {"nemo": d / "n.json", "speechbrain_csv": d / "sb.csv", "kaldi": d / "kaldi"}
        try:
            convert_manifest(tmp_path / "m.jsonl", targets, workers=n)
        except SpxError as exc:
            outs[n] = exc.message
            continue
        outs[n] = {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}
    assert outs[1] == outs[workers]


def test_bad_row_in_a_later_byte_range_names_its_line(tmp_path):
    good = json.dumps({"id": "u", "audio": "/a.wav", "duration": 1.0})
    lines = [json.dumps({"id": f"u{i}", "audio": "/a.wav", "duration": 1.0}) for i in range(5000)]
    lines[4321] = good.replace("1.0", "-1.0")
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SpxError) as e:
        convert_manifest(tmp_path / "m.jsonl", {"nemo": tmp_path / "n.json", "kaldi": tmp_path / "k"}, workers=2)
    assert e.value.where == f"{tmp_path / 'm.jsonl'}:4322" and "'duration' must be > 0" in e.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # nothing half-written
