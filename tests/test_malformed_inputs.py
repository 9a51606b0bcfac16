"""Malformed manifests, corpora and recipes: one clear SpxError each (what, where, how to fix), never a traceback.

Hand-written cases plus hypothesis-generated ones (several hundred inputs in all); a sample goes through the real CLI.
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spx.errors import SpxError
from spx.manifests.importers import ImportOptions, import_corpus
from spx.manifests.io import iter_manifest
from spx.manifests.validate import ValidateOptions, validate_manifest
from spx.spec.load import spec_from_data
from spx.yamlio import MAX_YAML_VALUES, load_yaml_with_lines

from conftest import DEMO, RECIPE, run_spx

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GOOD = {"id": "u1", "audio": "/data/u1.wav", "duration": 1.5, "text": "hello", "speaker": "s1"}


def assert_one_clear_error(exc: SpxError, where_prefix: str | None = None) -> None:
    line = exc.one_line()
    assert line and "\n" not in line and "Traceback" not in line
    assert exc.hint is None or "\n" not in exc.hint
    if where_prefix is not None:
        assert exc.where and exc.where.startswith(where_prefix), exc.where


def read_all(path: Path) -> None:
    for _ in iter_manifest(path):
        pass


# ---------------------------------------------------------------- manifests, hand-written
def row(**changes) -> str:
    d = {**GOOD, **changes}
    return json.dumps({k: v for k, v in d.items() if v is not DROP})


DROP = object()
BAD_MANIFESTS: dict[str, bytes] = {
    "not json": b"hello\n",
    "truncated object": b'{"id": "u1", "audio": \n',
    "trailing comma": b'{"id": "u1", "audio": "/a.wav", "duration": 1,}\n',
    "single quotes": b"{'id': 'u1'}\n",
    "array row": b'[1, 2, 3]\n',
    "string row": b'"u1 /a.wav 1.0"\n',
    "number row": b"42\n",
    "null row": b"null\n",
    "nested too deep": b"[" * 100000 + b"\n",
    "latin-1 bytes": b'{"id": "caf\xe9", "audio": "/a.wav", "duration": 1}\n',
    "utf-16 file": json.dumps(GOOD).encode("utf-16"),
    "lone surrogate": b'{"id": "u1", "audio": "/a.wav", "duration": 1, "text": "\\ud800"}\n',
    "missing id": row(id=DROP).encode(),
    "missing audio": row(audio=DROP).encode(),
    "missing duration": row(duration=DROP).encode(),
    "null id": row(id=None).encode(),
    "empty id": row(id="").encode(),
    "numeric id": row(id=7).encode(),
    "list audio": row(audio=["/a.wav"]).encode(),
    "empty audio": row(audio="").encode(),
    "string duration": row(duration="1.5").encode(),
    "zero duration": row(duration=0).encode(),
    "negative duration": row(duration=-2.0).encode(),
    "nan duration": b'{"id": "u1", "audio": "/a.wav", "duration": NaN}\n',
    "infinite duration": b'{"id": "u1", "audio": "/a.wav", "duration": Infinity}\n',
    "huge duration": b'{"id": "u1", "audio": "/a.wav", "duration": 1e999}\n',
    "bool duration": row(duration=True).encode(),
    "negative offset": row(offset=-0.5).encode(),
    "string offset": row(offset="0").encode(),
    "numeric text": row(text=12).encode(),
    "list speaker": row(speaker=["a"]).encode(),
    "object language": row(language={"en": 1}).encode(),
    "zero sample rate": row(sample_rate=0).encode(),
    "float sample rate": row(sample_rate=16000.5).encode(),
    "string channels": row(channels="2").encode(),
    "negative channels": row(channels=-1).encode(),
    "bool channels": row(channels=True).encode(),
    "meta list": row(meta=[1]).encode(),
    "meta string": row(meta="x").encode(),
    "unknown field": row(wav="/a.wav").encode(),
    "unknown fields": row(spk_id="s", wrd="w").encode(),
    "header wrong version": b'{"spx_manifest": 99}\n' + row().encode(),
    "header as text": b'{"spx_manifest": "one"}\n' + row().encode(),
    "good then bad": (row() + "\n" + row(id="u2", duration=-1)).encode(),
    "good then garbage": (row() + "\n{oops\n").encode(),
}


@pytest.mark.parametrize("name", sorted(BAD_MANIFESTS))
def test_bad_manifest_gives_one_error_with_its_line(tmp_path, name):
    p = tmp_path / "m.jsonl"
    p.write_bytes(BAD_MANIFESTS[name])
    with pytest.raises(SpxError) as e:
        read_all(p)
    assert_one_clear_error(e.value, where_prefix=f"{p}:")
    # validate never raises for row problems: it lists them (a schema version it cannot read is the exception)
    try:
        report = validate_manifest(p, ValidateOptions(check_audio=False))
    except SpxError as exc:
        assert "version" in exc.message
    else:
        assert not report.ok and all("\n" not in pr.message for pr in report.problems)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(SpxError, match="not found") as e:
        read_all(tmp_path / "nope.jsonl")
    assert_one_clear_error(e.value)


# ---------------------------------------------------------------- manifests, generated
INVALID_BY_FIELD = {
    "id": st.none() | st.just("") | st.integers() | st.floats() | st.lists(st.text(), max_size=2) | st.booleans(),
    "audio": st.none() | st.just("") | st.integers() | st.lists(st.text(), max_size=2) | st.dictionaries(st.text(), st.text(), max_size=2),
    "duration": st.none() | st.floats(max_value=0) | st.text() | st.booleans() | st.lists(st.floats(), max_size=2),
    "offset": st.floats(max_value=-1e-9, allow_infinity=False) | st.text() | st.booleans(),
    "text": st.integers() | st.floats() | st.lists(st.text(), max_size=2) | st.booleans(),
    "speaker": st.integers() | st.lists(st.text(), max_size=2) | st.booleans(),
    "sample_rate": st.integers(max_value=0) | st.floats() | st.text() | st.booleans(),
    "channels": st.integers(max_value=0) | st.floats() | st.text() | st.booleans(),
    "meta": st.integers() | st.text() | st.lists(st.integers(), max_size=2),
}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3), max_leaves=8)


@SETTINGS
@given(st.sampled_from(sorted(INVALID_BY_FIELD)).flatmap(lambda f: st.tuples(st.just(f), INVALID_BY_FIELD[f])),
       st.integers(0, 3))
def test_generated_invalid_field_is_rejected_at_its_line(tmp_path, field_value, good_before):
    field, value = field_value
    p = tmp_path / "m.jsonl"
    lines = [json.dumps({**GOOD, "id": f"ok{i}"}) for i in range(good_before)] + [json.dumps({**GOOD, field: value})]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpxError) as e:
        read_all(p)
    assert_one_clear_error(e.value, where_prefix=f"{p}:{good_before + 1}")


@SETTINGS
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_generated_bytes_never_traceback(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b"\n".join(lines))
    try:
        read_all(p)
    except SpxError as exc:
        assert_one_clear_error(exc, where_prefix=f"{p}:")
    report = validate_manifest(p, ValidateOptions(check_audio=False))
    assert report.utterances >= 0


@SETTINGS
@given(st.lists(JSON, min_size=1, max_size=3))
def test_generated_json_rows_never_traceback(tmp_path, rows):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        read_all(p)
    except SpxError as exc:
        assert_one_clear_error(exc, where_prefix=f"{p}:")


# ---------------------------------------------------------------- corpora (importers), generated
NEMO_KEYS = st.sampled_from(["audio_filepath", "duration", "text", "offset", "utt_id", "speaker", "lang", "spx_meta",
                             "spx_no_text", "sample_rate", "label"])


@SETTINGS
@given(st.lists(st.dictionaries(NEMO_KEYS, JSON, max_size=6) | JSON, min_size=1, max_size=3))
def test_generated_nemo_rows_never_traceback(tmp_path, rows):
    p = tmp_path / "nemo.json"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        list(import_corpus("nemo", p, ImportOptions(workers=1)))
    except SpxError as exc:
        assert_one_clear_error(exc)


KALDI_TEXT = st.text(st.sampled_from(string.ascii_letters[:6] + string.digits[:4] + " .-|\t/"), max_size=40)


@SETTINGS
@given(st.fixed_dictionaries({"wav.scp": KALDI_TEXT}, optional={n: KALDI_TEXT for n in ("segments", "utt2dur", "reco2dur", "text", "utt2spk")}))
def test_generated_kaldi_dirs_never_traceback(tmp_path, files):
    d = tmp_path / "k"
    d.mkdir(exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for name, text in files.items():
        (d / name).write_text(text + "\n")
    try:
        list(import_corpus("kaldi", d, ImportOptions(workers=1, audio_root=str(tmp_path))))
    except SpxError as exc:
        assert_one_clear_error(exc)


@SETTINGS
@given(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=120))
def test_generated_speechbrain_csv_never_traceback(tmp_path, body):
    p = tmp_path / "sb.csv"
    p.write_text("ID,duration,wav,spk_id,wrd\n" + body, encoding="utf-8")
    try:
        list(import_corpus("speechbrain_csv", p, ImportOptions(workers=1, data_root="/d")))
    except SpxError as exc:
        assert_one_clear_error(exc)


# ---------------------------------------------------------------- recipes (specs)
BASE_TEXT = RECIPE.read_text()
BAD_RECIPES: dict[str, str] = {
    "not a mapping": "- task\n- asr\n",
    "scalar": "conformer\n",
    "unclosed quote": "name: 'abc\n",
    "tab indent": "training:\n\tepochs: 3\n",
    "bad indent": "training:\n  epochs: 3\n batch_size: 2\n",
    "python tag": "!!python/object/apply:os.system ['echo pwned']\n",
    "python name tag": "task: !!python/name:os.system\n",
    "bad binary": "name: !!binary zzz\n",
    "complex key": "? [a, b]\n: 1\n",
    "recursive alias": "x: &a [*a]\n",
    "undefined alias": "task: *nothing\n",
    "unknown top key": BASE_TEXT + "trainer: {}\n",
    "typo key": BASE_TEXT.replace("  batch_size:", "  batch_sise:", 1),
    "wrong task": BASE_TEXT.replace("task: asr", "task: translation"),
    "unknown family": BASE_TEXT.replace("family: conformer_ctc", "family: whisper"),
    "family is a number": BASE_TEXT.replace("family: conformer_ctc", "family: 3"),
    "negative epochs": re.sub(r"epochs: \d+", "epochs: -1", BASE_TEXT, count=1),
    "epochs as text": re.sub(r"epochs: \d+", "epochs: thirty", BASE_TEXT, count=1),
    "epochs as list": re.sub(r"epochs: \d+", "epochs: [1, 2]", BASE_TEXT, count=1),
    "nan lr": re.sub(r"lr: [0-9.e-]+", "lr: .nan", BASE_TEXT, count=1),
    "heads do not divide": BASE_TEXT.replace("heads: 4", "heads: 5"),
    "even kernel": BASE_TEXT.replace("conv_kernel: 15", "conv_kernel: 14"),
    "bad subsampling": BASE_TEXT.replace("subsampling: 4", "subsampling: 3"),
    "dropout one": BASE_TEXT.replace("dropout: 0.1", "dropout: 1.0"),
    "training is a list": BASE_TEXT.replace("training:\n", "training: [1]\nxtraining:\n"),
    "data is a string": BASE_TEXT.replace("data:\n", "data: train.jsonl\nxdata:\n"),
    "train is a number": BASE_TEXT.replace("train: ../spx/demo/corpus/train.jsonl", "train: 5"),
    "bad launcher": BASE_TEXT.replace("launcher: local", "launcher: kubernetes"),
    "spec version": BASE_TEXT.replace("spec_version: 1", "spec_version: 99"),
    "duplicate doc": BASE_TEXT + "---\nname: two\n",
    "binary junk": "\x07\x08: \x1b[31m\n",
}
BAD_OVERRIDES = ["epochs", "=5", "training.=5", ".epochs=5", "training..epochs=5", "training.epochs=[", "training.epochs={a",
                 "training=5", "training.epochs.x=1", "nonexistent.key=1", "training.epochs=-3", "model.family=wav2vec",
                 "training.epochs=!!python/name:os.system", "model.encoder.heads=0"]


def load_text(text: str, overrides: list[str] | None = None):
    data, lines = load_yaml_with_lines(text, "recipe.yaml")
    return spec_from_data(data, "recipe.yaml", lines, overrides or [], base=RECIPE.parent)


@pytest.mark.parametrize("name", sorted(BAD_RECIPES))
def test_bad_recipe_gives_one_error(name):
    assert BAD_RECIPES[name] != BASE_TEXT, f"{name!r} no longer changes the recipe: update its replacement"
    with pytest.raises(SpxError) as e:
        load_text(BAD_RECIPES[name])
    assert_one_clear_error(e.value, where_prefix="recipe.yaml")


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_bad_override_gives_one_error(override):
    with pytest.raises(SpxError) as e:
        load_text(BASE_TEXT, [override])
    assert_one_clear_error(e.value)


def _leaf_paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _leaf_paths(v, prefix + (k,))


BASE_DATA = yaml.safe_load(BASE_TEXT)
PATHS = sorted(_leaf_paths(BASE_DATA), key=str)


@SETTINGS
@given(st.sampled_from(PATHS), JSON)
@example(("data", "test"), "\x00")  # found by hypothesis: pathlib raised ValueError on the NUL byte
def test_generated_recipe_values_never_traceback(path, value):
    data = json.loads(json.dumps(BASE_DATA))
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    try:
        spec_from_data(data, "recipe.yaml", {}, [], base=RECIPE.parent)
    except SpxError as exc:
        assert_one_clear_error(exc, where_prefix="recipe.yaml")


@SETTINGS
@given(st.text(max_size=200))
def test_generated_yaml_text_never_traceback(text):
    try:
        load_text(text)
    except SpxError as exc:
        assert_one_clear_error(exc, where_prefix="recipe.yaml")


@SETTINGS
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=30), min_size=1, max_size=3))
def test_generated_overrides_never_traceback(overrides):
    try:
        load_text(BASE_TEXT, overrides)
    except SpxError as exc:
        assert_one_clear_error(exc)


# ---------------------------------------------------------------- through the real CLI
def assert_cli_error(proc) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and 1 <= len(err) <= 2 and err[0].startswith("error: "), proc.stderr
    assert len(err) == 1 or err[1].startswith("hint: ")


@pytest.mark.parametrize("name", ["not json", "negative duration", "latin-1 bytes", "unknown field", "header wrong version",
                                  "nested too deep"])
def test_cli_rejects_bad_manifests(tmp_path, name):
    p = tmp_path / "m.jsonl"
    p.write_bytes(BAD_MANIFESTS[name])
    export = run_spx("manifest", "export", "nemo", p, tmp_path / "out.json")
    assert_cli_error(export)
    assert f"{p}:" in export.stderr and not (tmp_path / "out.json").exists()  # nothing half-written
    assert_cli_error(run_spx("manifest", "validate", p, "--no-audio"))


@pytest.mark.parametrize("name", ["python tag", "tab indent", "typo key", "negative epochs", "complex key", "recursive alias"])
def test_cli_rejects_bad_recipes(tmp_path, name):
    p = tmp_path / "recipe.yaml"
    p.write_text(BAD_RECIPES[name])
    proc = run_spx("spec", "validate", p)
    assert_cli_error(proc)
    assert f"{p}" in proc.stderr


@pytest.mark.parametrize("recipe, old, new, line_of, message", [
    ("fastpitch.yaml", "heads: 2 ", "heads: 3 ", "model:", "d_model (64) is not divisible by heads (3)"),
    ("fastpitch.yaml", "n_fft: 1024", "n_fft: 512", "n_fft: 512", "n_fft (512) is shorter than the window (1024 samples"),
    ("conformer_ctc.yaml", "n_mels: 40\n", "n_mels: 40\n  n_fft: 256\n", "n_fft: 256", "is shorter than the window (400"),
])
def test_checks_every_backend_shares_point_at_the_recipe_line(recipe, old, new, line_of, message):
    """Rules that hold on every backend (attention heads, STFT window) are spec errors at the key's line, before
    any adapter is asked."""
    text = (RECIPE.parent / recipe).read_text()
    assert old in text, f"{recipe} changed: update this test's replacement"
    bad = text.replace(old, new, 1)
    with pytest.raises(SpxError) as e:
        load_text(bad)
    assert_one_clear_error(e.value)
    assert message in str(e.value), str(e.value)
    assert e.value.where == f"recipe.yaml:{bad.splitlines().index(next(l for l in bad.splitlines() if line_of in l)) + 1}"


def test_unset_n_fft_is_the_power_of_two_that_covers_the_window():
    assert load_text(BASE_TEXT).features.n_fft == 512  # 25 ms at 16 kHz = 400 samples
    data = {"task": "tts", "model": {"family": "tacotron2"}, "data": BASE_DATA["data"]}
    assert spec_from_data(data, "tts.yaml", base=RECIPE.parent).features.n_fft == 1024  # 25 ms at 22.05 kHz = 551
    assert spec_from_data(data, "tts.yaml", overrides=["features.n_fft=600"], base=RECIPE.parent).features.n_fft == 600


# ---------------------------------------------------------------- strict YAML and empty manifests, through the real CLI
def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line of `text` that starts with `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle)]
    assert len(hits) >= nth, f"{needle!r} not in the recipe: update this test"
    return hits[nth - 1]


def nested_block(levels: int) -> str:
    return "deep:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, levels)) + "  " * levels + "leaf: 1\n"


def alias_bomb(levels: int = 8, width: int = 10) -> str:
    out = ["backends:", "  nemo:", "    a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    out += [f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(out) + "\n"


def alias_chain(anchors: int = 4, depth: int = 30) -> str:
    """Each anchor nests `depth` lists around the previous one: no level of the text is deep, the value is."""
    out = ["backends:", "  nemo:", "    a0: &a0 " + "[" * depth + "]" * depth]
    out += [f"    a{i}: &a{i} " + "[" * depth + f"*a{i - 1}" + "]" * depth for i in range(1, anchors + 1)]
    return "\n".join(out) + "\n"


DUP_TRAINING = BASE_TEXT + "training:\n  epochs: 2\n"
DUP_EPOCHS = BASE_TEXT.replace("  epochs: 40\n", "  epochs: 40\n  batch_size: 4\n  epochs: 3\n", 1)
DUP_HEADS = BASE_TEXT.replace("    heads: 4\n", "    heads: 4\n    heads: 2\n", 1)
DUP_FLOW = BASE_TEXT.replace("weight_decay: 0.001}", "weight_decay: 0.001, lr: 0.1}", 1)
DUP_IN_LIST = BASE_TEXT + "backends:\n  nemo:\n    callbacks:\n      - name: a\n        every: 1\n        name: b\n"
DUP_QUOTED = BASE_TEXT + '"task": tts\n'
LAST = len(BASE_TEXT.splitlines())
# name -> (file bytes, line the error names (None: the file), words the error holds)
STRICT_RECIPES: dict[str, tuple[bytes, int | None, str]] = {
    "duplicate top-level key": (DUP_TRAINING.encode(), LAST + 1, f"duplicate key 'training' (first at line {line_of(BASE_TEXT, 'training:')})"),
    "duplicate nested key": (DUP_EPOCHS.encode(), line_of(DUP_EPOCHS, "  epochs:", 2),
                             f"duplicate key 'training.epochs' (first at line {line_of(DUP_EPOCHS, '  epochs:')})"),
    "duplicate key two levels down": (DUP_HEADS.encode(), line_of(DUP_HEADS, "    heads:", 2), "duplicate key 'model.encoder.heads'"),
    "duplicate key in a flow mapping": (DUP_FLOW.encode(), line_of(DUP_FLOW, "  optimizer:"), "duplicate key 'training.optimizer.lr'"),
    "duplicate key in a list item": (DUP_IN_LIST.encode(), LAST + 6, f"duplicate key 'backends.nemo.callbacks[0].name' (first at line {LAST + 4})"),
    "duplicate key quoted and plain": (DUP_QUOTED.encode(), LAST + 1, "duplicate key 'task'"),
    "duplicate key after CRLF lines": (DUP_TRAINING.replace("\n", "\r\n").encode(), LAST + 1, "duplicate key 'training'"),
    "duplicate key after a BOM": (b"\xef\xbb\xbf" + DUP_TRAINING.encode(), LAST + 1, "duplicate key 'training'"),
    "deep block mappings": (nested_block(100).encode(), 65, "nested more than 64 levels deep"),
    "deep flow lists": (("x: " + "[" * 5000 + "]" * 5000 + "\n").encode(), 1, "nested more than 64 levels deep"),
    "deep block lists": (("x:\n" + "".join("  " * i + "-\n" for i in range(1, 100)) + "  " * 100 + "- 1\n").encode(), 65,
                         "nested more than 64 levels deep"),
    "deep flow mappings": (("x: " + "{a: " * 200 + "1" + "}" * 200 + "\n").encode(), 1, "nested more than 64 levels deep"),
    # a2 (line 5) is the first anchor 90 lists deep; a4 (line 7) the first to expand past 20000 values (111111)
    "deep through aliases": (alias_chain().encode(), 5, "nested more than 64 levels deep through aliases"),
    "alias bomb": (alias_bomb().encode(), 7, f"more than {MAX_YAML_VALUES} values once aliases are expanded"),
    "too many values": (("x: [" + ", ".join(["1"] * (MAX_YAML_VALUES + 1)) + "]\n").encode(), 1, f"holds more than {MAX_YAML_VALUES} values"),
    "huge file": ((BASE_TEXT + "# " + "x" * (2 << 20) + "\n").encode(), None, "2.0 MiB, more than the 1 MiB"),
    "recursive alias": (b"x: &a [1, *a]\n", 1, "holds an alias to itself"),
    "empty file": (b"", None, "the recipe is empty"),
    "only comments and blanks": (b"# a recipe\n\n   \n", None, "the recipe is empty"),
    "only a BOM": (b"\xef\xbb\xbf", None, "the recipe is empty"),
    "NUL byte": (BASE_TEXT.replace("name: conformer_ctc_tiny", "name: conformer\0ctc").encode(), line_of(BASE_TEXT, "name:"),
                 "character '\\x00' (U+0000) is not allowed"),
    "escape code": (BASE_TEXT.replace("name: conformer_ctc_tiny", "name: \x1b[31mred").encode(), line_of(BASE_TEXT, "name:"),
                    "(U+001B) is not allowed"),
    "invalid UTF-8": (BASE_TEXT.replace("name: conformer_ctc_tiny", "name: caf\udce9").encode("utf-8", "surrogateescape"),
                      line_of(BASE_TEXT, "name:"), "not UTF-8 text"),
    "invalid UTF-8 after a BOM": (b"\xef\xbb\xbfa: 1\nb: \xe9\n", 2, "not UTF-8 text (byte 11: b'\\xe9')"),  # offsets count the BOM
    "UTF-16 file": (BASE_TEXT.encode("utf-16"), 1, "not UTF-8 text (byte 0"),
    "tab indentation": (BASE_TEXT.replace("  epochs: 40", "\tepochs: 40", 1).encode(), line_of(BASE_TEXT, "  epochs:"), "invalid YAML"),
    "recipe is a list": (b"- task: asr\n- model: {}\n", None, "a recipe must be a YAML mapping, got list"),
    "recipe is a scalar": (b"conformer_ctc\n", None, "a recipe must be a YAML mapping, got str"),
    "two documents": ((BASE_TEXT + "---\nname: two\n").encode(), LAST + 1, "invalid YAML: expected a single document"),
}


def assert_one_line_error(proc, starts: str, words: str) -> None:
    assert_cli_error(proc)
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith(f"error: {starts}") and words in first, first
    assert "internal error" not in proc.stderr


@pytest.mark.parametrize("name", list(STRICT_RECIPES))
def test_cli_strict_recipe_gives_one_line(tmp_path, name):
    content, line, words = STRICT_RECIPES[name]
    p = tmp_path / "recipe.yaml"
    p.write_bytes(content)
    assert_one_line_error(run_spx("spec", "show", p), f"{p}:{line}: " if line else f"{p}: ", words)


@pytest.mark.parametrize("name, encode", [
    ("BOM", lambda t: b"\xef\xbb\xbf" + t.encode()),
    ("CRLF", lambda t: t.replace("\n", "\r\n").encode()),
    ("BOM and CRLF", lambda t: b"\xef\xbb\xbf" + t.replace("\n", "\r\n").encode()),
])
def test_cli_accepts_bom_and_crlf_recipes_with_their_line_numbers(tmp_path, name, encode):
    """Windows editors write a BOM and CRLF: the recipe reads the same, and errors still name the right line."""
    plain, odd = tmp_path / "plain.yaml", tmp_path / "odd.yaml"
    plain.write_text(BASE_TEXT)
    odd.write_bytes(encode(BASE_TEXT))
    assert run_spx("spec", "show", odd, check=True).stdout == run_spx("spec", "show", plain, check=True).stdout
    odd.write_bytes(encode(BASE_TEXT.replace("heads: 4", "heads: 5")))
    assert_one_line_error(run_spx("spec", "show", odd), f"{odd}:{line_of(BASE_TEXT, '  encoder:')}: ", "divisible by heads (5)")


@pytest.mark.parametrize("override, words", [
    ("model.encoder={layers: 2, layers: 3}", "duplicate key 'layers'"),
    ("name=" + "[" * 100, "nested more than 64 levels deep"),
    ("training.epochs=[", "invalid YAML"),
    ("name=!!python/name:os.system", "invalid YAML: could not determine a constructor"),
    ("name=a\x01b", "(U+0001) is not allowed"),
    ("backends.nemo.x=&a [*a]", "holds an alias to itself"),
    ("backends.nemo.x=" + alias_bomb().splitlines()[2].split(": ", 1)[1], ""),  # fine on its own: ten values
])
def test_cli_malformed_override_gives_one_line(override, words):
    proc = run_spx("spec", "show", RECIPE, override)
    if not words:
        assert proc.returncode == 0, proc.stderr
        return
    assert_one_line_error(proc, "override ", words)


HEADER = b'{"spx_manifest": 1}\n'
BOM = b"\xef\xbb\xbf"
DEMO_ROWS = [json.dumps(u.to_json_dict()) for u in iter_manifest(DEMO / "valid.jsonl")][:5]  # absolute audio paths
ROWS = ("\n".join(DEMO_ROWS) + "\n").encode()
# name -> (manifest bytes, the recipe key it is given as, the error's start ({m}: the manifest), words the error holds)
EMPTY_RUN_MANIFESTS: dict[str, tuple[bytes, str, str, str]] = {
    "empty train": (b"", "data.train", "data.train: {m} has no utterances", "the file is empty"),
    "blank valid": (b"\n  \n\t\n", "data.valid", "data.valid: {m} has no utterances", "only blank lines"),
    "CRLF blank lines": (b"\r\n\r\n", "data.valid", "data.valid: {m}", "only blank lines"),
    "header-only test": (HEADER, "data.test", "data.test: {m}", "only the header line"),
    "header and blank lines": (HEADER + b"\n\n", "data.train", "data.train: {m}", "only the header line"),
    "BOM and CRLF header only": (BOM + HEADER.replace(b"\n", b"\r\n"), "data.train", "data.train: {m}", "only the header line"),
    "header on the second line": (DEMO_ROWS[0].encode() + b"\n" + HEADER + ROWS, "data.train", "{m}:2: ",
                                  "must be the file's first line"),
    "header of another version": (b'{"spx_manifest": 2}\n' + ROWS, "data.valid", "{m}:1: ", "schema version 2 is not supported"),
    "header with a row's keys": (b'{"spx_manifest": 1, "id": "a"}\n' + ROWS, "data.valid", "{m}:1: ", "other keys besides"),
    "bad row after BOM and CRLF": (BOM + (HEADER + ROWS + b'{"id": "x", "audio": "/a.wav", "duration": -1}\n').replace(b"\n", b"\r\n"),
                                   "data.train", "{m}:7: ", "'duration' must be > 0"),
}


@pytest.mark.parametrize("name", list(EMPTY_RUN_MANIFESTS))
def test_cli_run_refuses_empty_manifests_naming_the_key(tmp_path, name):
    content, key, starts, words = EMPTY_RUN_MANIFESTS[name]
    m = tmp_path / "m.jsonl"
    m.write_bytes(content)
    proc = run_spx("run", "-b", "nemo", RECIPE, f"{key}={m}", "--dry-run", "--run-dir", tmp_path / "run")
    assert_one_line_error(proc, starts.format(m=m), words)
    if starts.startswith("data."):  # refused before anything is written (a bad row stops the copy into the run dir)
        assert not (tmp_path / "run").exists()


def test_cli_run_refuses_a_test_set_list_with_one_empty_member_and_an_all_filtered_train_set(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    proc = run_spx("run", "-b", "nemo", RECIPE, f"data.test=[{DEMO / 'test.jsonl'}, {empty}]", "--dry-run", "--run-dir", tmp_path / "a")
    assert_one_line_error(proc, f"data.test[1]: {empty} has no utterances", "the file is empty")
    proc = run_spx("run", "-b", "nemo", RECIPE, "data.max_duration=0.2", "--dry-run", "--run-dir", tmp_path / "b")
    n = sum(1 for _ in iter_manifest(DEMO / "train.jsonl"))
    assert_one_line_error(proc, f"data.train: all {n} utterances of {DEMO / 'train.jsonl'}", "outside data.min_duration/max_duration")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_run_accepts_a_bom_and_crlf_manifest(tmp_path):
    m = tmp_path / "valid.jsonl"
    m.write_bytes(BOM + (HEADER + ROWS).replace(b"\n", b"\r\n"))
    run_spx("run", "-b", "nemo", RECIPE, f"data.valid={m}", "--dry-run", "--run-dir", tmp_path / "run", check=True)
    copied = (tmp_path / "run" / "manifests" / "valid.jsonl").read_text(encoding="utf-8").splitlines()
    assert copied == [HEADER.decode().strip()] + DEMO_ROWS


@pytest.mark.parametrize("content, problem", [
    (b"", ":1: no_utterances: the file is empty"),
    (b" \n\r\n\n", ":1: no_utterances: the file holds only blank lines"),
    (HEADER, ":1: no_utterances: the file holds only the header line"),
    (BOM + HEADER.replace(b"\n", b"\r\n") + b"\r\n", ":1: no_utterances: the file holds only the header line"),
    (ROWS + HEADER, f":{len(DEMO_ROWS) + 1}: schema: the header {{'spx_manifest': ...}} must be the file's first line"),
    ((HEADER + ROWS).replace(b"\n", b"\r\n").replace(b'"duration": ', b'"duration": -', 1), ":2: bad_duration:"),
])
def test_cli_validate_reports_empty_and_misplaced_header_manifests(tmp_path, content, problem):
    m = tmp_path / "m.jsonl"
    m.write_bytes(content)
    proc = run_spx("manifest", "validate", m, "--no-audio")
    assert_one_line_error(proc, f"{m}: ", "problem(s) in")
    assert f"{m}{problem}" in proc.stdout, proc.stdout


def test_cli_validate_accepts_a_bom_and_crlf_manifest(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_bytes(BOM + (HEADER + ROWS).replace(b"\n", b"\r\n"))
    proc = run_spx("manifest", "validate", m, "--no-audio", check=True)
    assert f"{m}: {len(DEMO_ROWS)} utterances, no problems" in proc.stdout
