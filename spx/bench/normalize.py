"""Text normalization for scoring: Whisper's English normalizer on an exact fast path, remembered results, and
large inputs split across processes.

`whisper_normalizer.english.EnglishTextNormalizer` runs ~60 `re.sub` calls per string (53 contraction and title
patterns, each looked up in `re`'s pattern cache), a per-character generator for symbols and diacritics and a
per-word state machine for numbers. `FastEnglishTextNormalizer` runs the same steps in the same order with the
package's own tables and sub-normalizers (~8x faster on English-like text, ~3x on digit-heavy text:
benchmarks/scoring_100k.py) and skips only work that cannot change the output:

- a substitution whose pattern cannot match without a literal the string lacks is not called (`re.sub` would
  return the string unchanged): the 53 replacers (`\\bwon't\\b`, `'s\\b`: literals between word-boundary
  anchors), the fillers, brackets, parentheses, commas, periods, lone currency and percent signs; the 21
  replacers that need an apostrophe are not even looked at in a string without one (no replacement writes one);
- the symbol/diacritic step maps each character of the NFKD string on its own, so it runs as one `str.translate`
  whose table is filled, on first sight of a character, by the package's own `remove_symbols_and_diacritics`
  (NFKD(c) == c for every character NFKD outputs, checked for every code point: the function sees c itself);
- the number normalizer's `process_words` runs on the runs of number tokens only (standardize_numbers says why
  that is exact), each distinct run once; `preprocess` only where a digit or "half" occurs, `postprocess` only
  where "1", "$", "€" or "£" occurs (its patterns need one);
- the final whitespace squeeze only where a substitution after the spelling step (which joins words with single
  spaces) ran.

tests/test_normalizer_fast_path.py compares the output with the package's on thousands of varied strings. The
steps of `EnglishTextNormalizer.__call__` are restated here, so the fast path is used only with the
whisper-normalizer versions it was verified against (VERIFIED_VERSIONS); any other version gets the package's
own normalizer (same output, package speed) and `normalizer_info` records which one ran.
"""
from __future__ import annotations

import functools
import os
import re
from importlib import metadata
from typing import Callable, Sequence

from spx.errors import SpxError

VERIFIED_VERSIONS = ("0.1.15",)
_LITERAL_CHARS = re.compile(r"[\w ']+")


def installed_version() -> str | None:
    try:
        return metadata.version("whisper-normalizer")
    except metadata.PackageNotFoundError:
        return None


def fast_path_available() -> bool:
    return installed_version() in VERIFIED_VERSIONS


class _SymbolTable(dict):
    """str.translate table of `remove_symbols_and_diacritics(c, keep)` for each character c of an NFKD string,
    each computed by the package's own function the first time the character is seen (NFKD(c) == c for every
    character of an NFKD string, so the function sees c itself)."""

    def __init__(self, keep: str):
        super().__init__()
        from whisper_normalizer.basic import remove_symbols_and_diacritics

        self._one = lambda c: remove_symbols_and_diacritics(c, keep=keep)

    def __missing__(self, code: int) -> str:
        out = self[code] = self._one(chr(code))
        return out


def _alternatives(pattern: str) -> tuple[str, ...] | None:
    """The literals of a `\\b(a|b|c)\\b` pattern (one must occur for a match), or None for any other pattern."""
    m = re.fullmatch(r"\\b\((.*)\)\\b", pattern)
    words = m.group(1).split("|") if m else []
    return tuple(words) if words and all(_LITERAL_CHARS.fullmatch(w) for w in words) else None


class FastEnglishTextNormalizer:
    """`EnglishTextNormalizer()(s)`, same output, without the work that cannot change it (module docstring)."""

    def __init__(self):
        import unicodedata

        from whisper_normalizer.english import EnglishTextNormalizer

        package = EnglishTextNormalizer()
        self._nfkd = lambda s: unicodedata.normalize("NFKD", s)
        self._brackets = re.compile(r"[<\[][^>\]]*[>\]]")
        self._parentheses = re.compile(r"\(([^)]+?)\)")
        self._ignore = re.compile(package.ignore_patterns)
        fillers = _alternatives(package.ignore_patterns)  # the pattern cannot match without one of them
        # (an unforeseen pattern: the empty regex, which always matches, so the substitution always runs)
        self._filler_hint = re.compile("|".join(map(re.escape, fillers or ())))
        self._space_apostrophe = re.compile(r"\s+'")
        # (literal the pattern cannot match without, or None: always run; compiled pattern; replacement)
        self._replacers = []
        for pattern, replacement in package.replacers.items():
            literal = pattern.replace(r"\b", "")
            must_contain = literal if _LITERAL_CHARS.fullmatch(literal) else None
            self._replacers.append((must_contain, re.compile(pattern), replacement))
        # most need an apostrophe, and no replacement writes one: a string without one skips them all
        no_apostrophe = [r for r in self._replacers if r[0] is None or "'" not in r[0]]
        writes_apostrophe = any("'" in r for r in package.replacers.values())
        self._replacers_no_apostrophe = self._replacers if writes_apostrophe else no_apostrophe
        self._digit_commas = re.compile(r"(\d),(\d)")
        self._periods = re.compile(r"\.([^0-9]|$)")
        self._symbols = _SymbolTable(keep=".%$¢€£")
        self._numbers = package.standardize_numbers
        self._number_words = frozenset(package.standardize_numbers.words)
        self._number_prefixes = frozenset(package.standardize_numbers.prefixes)
        self._arabic_number = re.compile(r"^\d+(\.\d+)?$")  # EnglishNumberNormalizer.process_words' test
        self._digit = re.compile(r"\d")
        self._spellings = package.standardize_spellings.mapping  # EnglishSpellingNormalizer: word -> word
        # process_words is a pure function of its word list: runs ("and",), ("one",), ("1",) repeat endlessly
        self._number_run = functools.lru_cache(maxsize=1 << 16)(
            lambda run: tuple(w for w in package.standardize_numbers.process_words(list(run)) if w is not None))
        self._lone_prefix = re.compile(r"[.$¢€£]([^0-9])")
        self._lone_percent = re.compile(r"([^0-9])%")
        self._spaces = re.compile(r"\s+")

    def _is_number_token(self, word: str) -> bool:
        """Whether EnglishNumberNormalizer.process_words treats the word as (part of) a number: a word of its
        vocabulary, or an arabic number after an optional sign/currency prefix (its regex starts with \\d, a
        Unicode decimal digit, which is what str.isdecimal tests)."""
        if word in self._number_words:
            return True
        bare = word[1:] if word[0] in self._number_prefixes else word
        return bare[:1].isdecimal() and self._arabic_number.match(bare) is not None

    def standardize_numbers(self, s: str) -> str:
        """EnglishNumberNormalizer()(s), with process_words run only on the runs of number tokens.

        process_words is a left-to-right state machine; a word that is no number token is yielded as it is and
        leaves the state as at the start (no value, no prefix, no skip), and such a word as a neighbour (prev or
        next) takes the same branches as the list's ends (None). So the output is the concatenation of
        process_words over the maximal runs of number tokens, with the other words between them unchanged."""
        numbers = self._numbers
        may_have_arabic = "half" in s or self._digit.search(s) is not None
        if may_have_arabic:
            s = numbers.preprocess(s)  # without a digit or "half" it returns s (or "" for blank s)
        words = s.split()
        if not may_have_arabic and self._number_words.isdisjoint(words):
            return " ".join(words)
        is_number = self._is_number_token if may_have_arabic else self._number_words.__contains__
        out: list[str] = []
        run: list[str] = []
        for word in words:
            if is_number(word):
                run.append(word)
                continue
            if run:
                out += self._number_run(tuple(run))
                run = []
            out.append(word)
        if run:
            out += self._number_run(tuple(run))
        s = " ".join(out)
        # postprocess's three patterns each need "$", "€", "£" or "1": without them it changes nothing
        return numbers.postprocess(s) if "1" in s or "$" in s or "€" in s or "£" in s else s

    def __call__(self, s: str) -> str:
        s = s.lower()
        if "<" in s or "[" in s:
            s = self._brackets.sub("", s)
        if "(" in s:
            s = self._parentheses.sub("", s)
        if self._filler_hint.search(s):
            s = self._ignore.sub("", s)
        if "'" in s:
            s = self._space_apostrophe.sub("'", s)
        replacers = self._replacers if "'" in s else self._replacers_no_apostrophe
        for must_contain, pattern, replacement in replacers:
            if must_contain is None or must_contain in s:
                s = pattern.sub(replacement, s)
        if "," in s:
            s = self._digit_commas.sub(r"\1\2", s)
        if "." in s:
            s = self._periods.sub(r" \1", s)
        s = self._nfkd(s).translate(self._symbols)
        s = self.standardize_numbers(s)
        spellings = self._spellings
        s = " ".join([spellings.get(word, word) for word in s.split()])  # EnglishSpellingNormalizer.__call__
        # s is words joined by single spaces: the final whitespace squeeze can only change what the two
        # substitutions before it changed
        lone_symbols = "." in s or "$" in s or "¢" in s or "€" in s or "£" in s
        if lone_symbols:
            s = self._lone_prefix.sub(r" \1", s)
        if "%" in s:
            s = self._lone_percent.sub(r"\1 ", s)
            lone_symbols = True
        return self._spaces.sub(" ", s) if lone_symbols else s


# ---------------------------------------------------------------- many strings: memo and processes
NAMES = ("whisper_english", "basic", "none")
MEMO_MAX = 500_000  # strings remembered per normalizer: 100k utterances x 3 backends are ~320k (~55 MB)
# New strings from which other processes are used. Starting one costs ~0.5 s CPU; on the 2-core dev box two
# processes lost to one at 168k new strings (4.5-5.0 s vs 4.0-4.2 s for 100k utterances: its second vCPU was
# mostly busy), so only inputs that take one process several seconds are shared out.
PARALLEL_MIN = 200_000
CHUNK = 5_000  # strings per piece of work shared between processes (~0.1 s)

_normalizers: dict[str, Callable[[str], str]] = {}
_memo: dict[str, dict[str, str]] = {}


def normalizer(name: str) -> Callable[[str], str]:
    """The named normalizer (built once per process): whisper_english is FastEnglishTextNormalizer where the
    installed whisper-normalizer is a verified version, else the package's EnglishTextNormalizer."""
    norm = _normalizers.get(name)
    if norm is None:
        if name == "whisper_english":
            if fast_path_available():
                norm = FastEnglishTextNormalizer()
            else:
                from whisper_normalizer.english import EnglishTextNormalizer

                norm = EnglishTextNormalizer()
        elif name == "basic":
            from whisper_normalizer.basic import BasicTextNormalizer

            norm = BasicTextNormalizer()
        elif name == "none":
            norm = str
        else:
            raise SpxError(f"unknown normalizer {name!r}", hint=f"eval.normalizer is one of: {', '.join(NAMES)}")
        _normalizers[name] = norm
    return norm


def forget() -> None:
    """Drop the remembered normalizations (benchmarks time cold runs with it)."""
    _memo.clear()


def normalize_chunk(name: str, texts: Sequence[str]) -> list[str]:
    """Normalize, then collapse whitespace (one space between words, none at the ends)."""
    norm = normalizer(name)
    return [" ".join(norm(t).split()) for t in texts]


PROCESSES_ENV = "SPX_SCORING_PROCESSES"


def worker_count() -> int:
    """Processes for large inputs: $SPX_SCORING_PROCESSES (1 keeps everything in this process), else the usable
    cores that other jobs leave idle (1-minute load average, this process counted as one of them): on the 2-core
    dev box, a second process on a core a training held made the 100k scoring 0.4 s slower, on an idle one 0.6 s
    faster."""
    raw = os.environ.get(PROCESSES_ENV)
    if raw is not None:
        if not raw.strip().isdecimal() or int(raw) < 1:
            raise SpxError(f"{PROCESSES_ENV}={raw!r} is not a positive integer", hint=f"e.g. {PROCESSES_ENV}=1")
        return int(raw)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    others = max(0.0, os.getloadavg()[0] - 1)
    return max(1, min(cores, int(cores - others + 0.5)))


def normalize_all(texts: Sequence[str | None], name: str, processes: int | None = None,
                  parallel_min: int = PARALLEL_MIN) -> list[str]:
    """Normalize many strings (None as ""), in order. Each distinct string is normalized once per process and
    remembered, so the references every cell of a bench shares, and hypotheses equal to their reference, cost a
    dict look-up. When at least `parallel_min` strings are new, they are split across up to `processes`
    (default: worker_count()) processes, each part at least parallel_min / 2 strings; this process normalizes the
    first part itself."""
    normalizer(name)  # an unknown name fails here, before any process starts
    memo = _memo.setdefault(name, {})
    texts = [t or "" for t in texts]
    new = list(dict.fromkeys(t for t in texts if t not in memo))
    parts = min(worker_count() if processes is None else processes, 2 * len(new) // max(parallel_min, 1))
    if parts > 1:
        done = _normalize_in_processes(name, new, parts)
    else:
        done = normalize_chunk(name, new)
    memo.update(zip(new, done))
    out = [memo[t] for t in texts]
    if len(memo) > MEMO_MAX:
        memo.clear()
    return out


def _normalize_in_processes(name: str, texts: list[str], processes: int, work_here: bool = True) -> list[str]:
    """Chunks of CHUNK strings, order kept: `processes - 1` spawned processes (a clean interpreter each: no fork
    of a process that may hold threads) take chunks from the front, this process from the back, each chunk done
    once (a chunk no process has started is cancelled there and done here). While the others start, or where
    the machine has no idle core, this process simply does more of the work (none with work_here=False)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)]
    here: dict[int, list[str]] = {}
    with ProcessPoolExecutor(processes - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(normalize_chunk, name, chunk) for chunk in chunks]
        for i in range(len(chunks) - 1, -1, -1) if work_here else ():
            if not futures[i].cancel():  # started (or queued) in another process
                break
            here[i] = normalize_chunk(name, chunks[i])
        out: list[str] = []
        for i, f in enumerate(futures):
            out += here[i] if i in here else f.result()
    return out
