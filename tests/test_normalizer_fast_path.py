"""The fast Whisper English normalizer (spx.bench.normalize) gives exactly what whisper_normalizer's own
EnglishTextNormalizer gives, and normalize_all (memo, several processes) exactly what the package's normalizers
give string by string.

The sample: the demo corpus transcripts and thousands of generated strings built from the package's own tables
(every number word, every contraction and title pattern, British spellings) mixed with arabic numbers,
currencies, ordinals, percentages, fillers, brackets, punctuation, unicode, case changes, empty strings and odd
whitespace; plus hypothesis-generated strings from the same tokens and arbitrary unicode.
"""
from __future__ import annotations

import json
import os
import random
import unicodedata
from importlib.resources import files
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishNumberNormalizer, EnglishTextNormalizer

from spx.bench import normalize, scoring
from spx.errors import SpxError

DEMO = Path(__file__).resolve().parents[1] / "spx" / "demo" / "corpus"
PACKAGE = EnglishTextNormalizer()
FAST = normalize.FastEnglishTextNormalizer()

NUMBER_WORDS = sorted(EnglishNumberNormalizer().words)
CONTRACTIONS = [p.replace(r"\b", "") for p in PACKAGE.replacers]  # "won't", "mr", "'d been", "n't", ...
BRITISH = sorted(json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text()))[::9]
PLAIN = ("the a cat sat on mat it is was he she they we you I go stop open close light door window red "
         "green blue left right up down turn off hello world said time people year way day man thing "
         "woman life child school state family student group country problem hand part place case week "
         "company system program question work government number night point home water room mother "
         "area money story fact month lot right study book eye job word business issue side kind head "
         "house service friend father power hour game line end member law car city community name").split()
ARABIC = ["0", "1", "2", "12", "007", "1,000", "10,000,000", "3.5", "1.50", "2.07", "0.5", "10:30", "1.2.3.4",
          "1st", "2nd", "3rd", "4th", "21st", "1960s", "100s", "1s", "3d", "2x", "x2", "1/2", "3-4", "1e5", "٣", "１２"]
MONEY = ["$20", "$2", "£3.50", "€5", "¢7", "$0.07", "$0.5", "$1", "20%", "-3", "+4", "$", "£", "%", "€", "¢", "$.",
         "5$", "%5", "-", "+", "$20 million", "$2 and ¢7", "£1 ¢5"]
FILLERS = ["um", "uh", "hmm", "mm", "mhm", "mmm", "Um,", "UH", "umm", "uhh", "hmmm", "drum", "humming"]
BRACKETS = ["[noise]", "<unk>", "(laughs)", "(", ")", "[", "]", "<", ">", "[a b]", "(a (b) c)", "<b>bold</b>", "()"]
PUNCT = [",", ".", "!", "?", ";", ":", '"', "'", "-", "—", "…", "'s", "’", "''", "...", ".5", "a.m.", "U.S.", "e.g."]
UNICODE = ["café", "naïve", "Œuvre", "straße", "ﬁne", "²", "🙂", "e\u0301", "한국어", "αβγ", "中文", "\u00a0", "Ⅻ",
           "½", "ǅ", "İstanbul", "ﬀ", "Ångström", "þorn", "ŁÓDŹ", "\u200b", "\ufeff", "x\u0338"]
PHRASES = ["and a half", "one and a half", "two point five", "double oh seven", "triple nine", "per cent",
           "ten percent", "minus five", "five dollars and seven cents", "one hundred and one", "twenty-one",
           "a million dollars", "o'clock", "one oh one", "first", "the 1st of may", "nineteen sixties",
           "two thousand and twenty", "point", "and", "double", "half", "a half", "one ones", "sixes",
           "three hundredths", "zero point zero one", "fifty fifty", "a hundred and twenty three", "plus minus",
           "twenty twenty", "four fifths", "one point two million", "eleven hundred", "five and a half thousand"]
POOLS = [(PLAIN, 30), (NUMBER_WORDS, 14), (CONTRACTIONS, 8), (BRITISH, 6), (ARABIC, 8), (MONEY, 6), (FILLERS, 4),
         (BRACKETS, 3), (PUNCT, 6), (UNICODE, 4), (PHRASES, 8)]
SEPARATORS = [" "] * 12 + ["", "  ", ", ", ". ", "-", "\t", "\n", " '", "' ", "\u00a0"]
CASES = [str, str, str, str.lower, str.upper, str.title, str.capitalize]
TOKENS = sorted({t for pool, _ in POOLS for t in pool})


def generated(n: int, seed: int, number_heavy: bool = False) -> list[str]:
    rng = random.Random(seed)
    pools = [p for p, _ in POOLS]
    weights = [w * (6 if number_heavy and p in (NUMBER_WORDS, ARABIC, MONEY, PHRASES) else 1) for p, w in POOLS]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.choice([0, 1, 2] + list(range(3, 26)))):
            parts += [rng.choice(rng.choices(pools, weights)[0]), rng.choice(SEPARATORS)]
        s = "".join(parts[:-1])
        out.append(rng.choice(CASES)(s) if s else rng.choice(["", " ", "\n", "\t \u00a0"]))
    return out


def demo_transcripts() -> list[str]:
    rows = []
    for name in ("train", "valid", "test"):
        for line in (DEMO / f"{name}.jsonl").read_text().splitlines()[1:]:
            rows.append(json.loads(line)["text"])
    return rows


SAMPLE = demo_transcripts() + generated(5000, seed=0) + generated(3000, seed=1, number_heavy=True)


def outcome(norm, s: str):
    try:
        return norm(s)
    except Exception as exc:  # the package raising must be matched by the fast path raising the same
        return (type(exc).__name__, str(exc))


def test_sample_is_large_and_varied():
    digits = sum(any(c.isdigit() for c in s) for s in SAMPLE)
    number_words = sum(not set(s.lower().split()).isdisjoint(NUMBER_WORDS) for s in SAMPLE)
    plain = sum(not any(c.isdigit() for c in s) and set(s.lower().split()).isdisjoint(NUMBER_WORDS) for s in SAMPLE)
    assert len(SAMPLE) > 8000 and min(digits, number_words, plain) > 800, (digits, number_words, plain)
    assert sum(not s.strip() for s in SAMPLE) > 20


@pytest.fixture(scope="module")
def package_output() -> list:
    return [outcome(PACKAGE, s) for s in SAMPLE]


def test_fast_english_normalizer_gives_the_package_output_on_the_sample(package_output):
    fast = [outcome(FAST, s) for s in SAMPLE]
    mismatches = [(s, want, got) for s, want, got in zip(SAMPLE, package_output, fast) if want != got]
    assert not mismatches, mismatches[:5]


@settings(max_examples=250, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=6), max_size=20),
       st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=3), st.sampled_from(CASES))
def test_fast_english_normalizer_gives_the_package_output_on_generated_text(tokens, separators, case):
    s = case("".join(t + separators[i % len(separators)] for i, t in enumerate(tokens)))
    assert outcome(FAST, s) == outcome(PACKAGE, s)


def test_symbol_table_equals_the_package_function_for_every_character():
    """The translate table's premise: the package's remove_symbols_and_diacritics, applied to a whole string,
    is its per-character result over the string's NFKD form (planes 0 and 1, surrogates aside)."""
    from whisper_normalizer.basic import remove_symbols_and_diacritics

    chars = "".join(chr(c) for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF)
    want = remove_symbols_and_diacritics(chars, keep=".%$¢€£")
    assert unicodedata.normalize("NFKD", chars).translate(FAST._symbols) == want


def test_number_normalizer_runs_equal_the_whole_sentence():
    """standardize_numbers runs the package's process_words on runs of number tokens only; number-dense text is
    where that could differ from one pass over all words."""
    numbers = EnglishNumberNormalizer()
    sample = [PACKAGE.standardize_spellings(s.lower()) for s in generated(3000, seed=2, number_heavy=True)]
    assert [outcome(FAST.standardize_numbers, s) for s in sample] == [outcome(numbers, s) for s in sample]


def test_normalize_all_equals_the_package_string_by_string_cold_warm_and_in_two_processes(package_output):
    basic = BasicTextNormalizer()
    rows = SAMPLE[:4000] + [None]
    expected = {"whisper_english": [" ".join(out.split()) for out in package_output[:4000]] + [""],
                "basic": [" ".join(basic(s or "").split()) for s in rows],
                "none": [" ".join((s or "").split()) for s in rows]}
    for name, want in expected.items():
        normalize.forget()
        assert scoring.normalize_all(rows, name, processes=1) == want, name  # cold
        assert scoring.normalize_all(rows, name, processes=1) == want, name  # every string remembered
    normalize.forget()
    got = normalize.normalize_all(rows, "whisper_english", processes=2, parallel_min=100)
    assert got == expected["whisper_english"]


def test_chunks_normalized_in_another_process_come_back_in_order(monkeypatch):
    monkeypatch.setattr(normalize, "CHUNK", 300)
    rows = SAMPLE[:3000]
    want = normalize.normalize_chunk("whisper_english", rows)
    assert normalize._normalize_in_processes("whisper_english", rows, 2, work_here=False) == want  # all there
    assert normalize._normalize_in_processes("whisper_english", rows, 2) == want  # shared (mostly here)


def test_scoring_processes_setting_is_checked_and_busy_cores_are_left_alone(monkeypatch):
    monkeypatch.delenv("SPX_SCORING_PROCESSES", raising=False)
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process running
    assert normalize.worker_count() == cores
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, 1.0, 1.0))  # every core busy
    assert normalize.worker_count() == 1
    monkeypatch.setenv("SPX_SCORING_PROCESSES", "1")
    assert normalize.worker_count() == 1
    monkeypatch.setenv("SPX_SCORING_PROCESSES", "two")
    with pytest.raises(SpxError, match="SPX_SCORING_PROCESSES='two' is not a positive integer"):
        scoring.normalize_all(["a"], "basic")


def test_normalizer_info_says_whether_the_fast_path_ran():
    info = scoring.normalizer_info("whisper_english")
    assert info["fast_path"] is (info["version"] in normalize.VERIFIED_VERSIONS)
    assert isinstance(scoring.normalizer("whisper_english"), normalize.FastEnglishTextNormalizer) is info["fast_path"]
    assert "fast_path" not in scoring.normalizer_info("basic")


def test_an_unverified_package_version_gets_the_package_normalizer(monkeypatch):
    monkeypatch.setattr(normalize, "VERIFIED_VERSIONS", ("0.0.0",))
    monkeypatch.setattr(normalize, "_normalizers", {})
    monkeypatch.setattr(normalize, "_memo", {})
    assert type(scoring.normalizer("whisper_english")) is EnglishTextNormalizer
    assert scoring.normalizer_info("whisper_english")["fast_path"] is False
    assert scoring.normalize_all(["Mr. Smith's colour"], "whisper_english") == ["mister smith is color"]


@pytest.mark.parametrize("text, expected", [  # one case per shortcut: where each pre-check must not skip
    ("I won't go", "i will not go"), ("Mr Smith's", "mister smith is"), ("he'd been", "he had been"),
    ("[noise] <unk> (laughs) ok", "ok"), ("um uh hmm mm", ""), ("1,000 dollars", "$1000"), ("3.5%", "3.5%"),
    ("twenty one and a half", "21.5"), ("one", "one"), ("café colour", "cafe color"), ("$20 and ¢7", "$20.07"),
    ("", ""), (" \t\u00a0 ", ""),
])
def test_fast_path_hand_checked_cases(text, expected):
    assert FAST(text) == PACKAGE(text) == expected
