"""Scoring against hand-computed cases: normalizer, WER/CER counts, bootstrap CIs (coverage on synthetic data
with a known truth), paired differences, RTF/RTFx arithmetic."""
from __future__ import annotations

import random

import jiwer
import numpy as np
import pytest

from spx.bench import scoring
from spx.errors import SpxError


# ---------------------------------------------------------------- normalizer
@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", "hello world"),
    ("Mr. Smith paid $20.", "mister smith paid $20"),
    ("The colour is grey", "the color is gray"),   # British -> American spelling
    ("I'm twenty-one", "i am 21"),
    ("um the cat", "the cat"),                     # fillers removed
])
def test_whisper_english_normalizer(text, expected):
    assert scoring.normalize_all([text], "whisper_english") == [expected]


def test_basic_and_none_normalizers():
    assert scoring.normalize_all(["Hello, World!  Mr. X"], "basic") == ["hello world mr x"]
    assert scoring.normalize_all(["Hello,  World!"], "none") == ["Hello, World!"]


def test_normalizer_info_records_version_and_unknown_name_is_clear():
    info = scoring.normalizer_info("whisper_english")
    assert info["package"] == "whisper-normalizer" and info["version"] and "EnglishTextNormalizer" in info["implementation"]
    assert scoring.normalizer_info("none")["version"] is None
    with pytest.raises(SpxError, match="unknown normalizer 'klingon'"):
        scoring.normalizer("klingon")


# ---------------------------------------------------------------- WER / CER counts
def test_word_counts_hand_computed():
    e = scoring.utterance_errors(["a b c d", "a b c", "x y"], ["a x c d e", "", "x y"], "word")
    assert e.sub.tolist() == [1, 0, 0] and e.dele.tolist() == [0, 3, 0] and e.ins.tolist() == [1, 0, 0]
    assert e.ref_len.tolist() == [4, 3, 2]
    c = e.corpus()
    assert c == {"rate": 5 / 9, "errors": 5, "ref_units": 9, "substitutions": 1, "deletions": 3, "insertions": 1}


def test_corpus_wer_is_sum_of_errors_over_sum_of_words_not_mean_of_rates():
    m = scoring.error_counts(["a", "a b c d e f g h i"], ["b", "a b c d e f g h i"])
    assert m["wer"] == pytest.approx(1 / 10)  # the mean of per-utterance rates would be 0.5


def test_cer_hand_computed_and_empty_refs_skipped():
    m = scoring.error_counts(["abc", "", "ab cd"], ["abd", "noise", "ab cd"])
    assert m["cer"] == pytest.approx(1 / 8)  # "abc" + "ab cd" = 8 characters (space counts), 1 substitution
    assert m["words"] == 3


def test_counts_match_jiwer_on_random_sentences():
    rng = random.Random(7)
    vocab = "the a cat dog sat on mat big red blue".split()
    refs = [" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(300)]
    hyps = []
    for r in refs:
        words = [w for w in r.split() if rng.random() > 0.1]
        words = [rng.choice(vocab) if rng.random() < 0.15 else w for w in words]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), rng.choice(vocab))
        hyps.append(" ".join(words))
    mine = scoring.error_counts(refs, hyps)
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    assert (mine["substitutions"], mine["deletions"], mine["insertions"]) == (w.substitutions, w.deletions, w.insertions)
    assert mine["wer"] == pytest.approx(w.wer)
    assert mine["cer"] == pytest.approx(c.cer)


def test_alignment_marks_substitution_deletion_insertion():
    al = scoring.align("the cat sat on the mat", "the bat sat the mat now")
    assert [op for _, _, op in al] == ["C", "S", "C", "D", "C", "C", "I"]
    assert al[1] == ("cat", "bat", "S") and al[3] == ("on", "", "D") and al[6] == ("", "now", "I")


# ---------------------------------------------------------------- bootstrap
def _reference_bootstrap(errors, words, samples, seed):
    idx = np.random.default_rng(seed).integers(0, errors.shape[1], size=(samples, errors.shape[1]), dtype=np.int32)
    return errors[:, idx].sum(-1) / words[idx].sum(-1)


@pytest.mark.parametrize("scale", [1, 10**6])  # 10**6 makes the packed (two counts per uint64) path impossible
def test_bootstrap_equals_straightforward_resampling(scale):
    rng = np.random.default_rng(3)
    words = rng.integers(1, 20, 50) * scale
    errors = np.vstack([rng.binomial(words // scale, 0.2) * scale, rng.binomial(words // scale, 0.3) * scale])
    got = scoring.bootstrap_rates(errors, words, samples=200, seed=11)
    np.testing.assert_allclose(got, _reference_bootstrap(errors, words, 200, 11))


def test_bootstrap_is_seeded():
    e, w = np.array([[1, 0, 2, 3]]), np.array([5, 5, 5, 5])
    np.testing.assert_array_equal(scoring.bootstrap_rates(e, w, 300, seed=1), scoring.bootstrap_rates(e, w, 300, seed=1))
    assert not np.array_equal(scoring.bootstrap_rates(e, w, 300, seed=1), scoring.bootstrap_rates(e, w, 300, seed=2))


def test_bootstrap_ci_covers_the_true_wer_about_95_percent_of_the_time():
    """Each word is wrong with probability 0.2: the true corpus WER is 0.2. Over 300 independent test sets the
    95% percentile interval must contain 0.2 in roughly 95% of them."""
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        words = rng.integers(3, 15, 150)
        errors = rng.binomial(words, 0.2)
        lo, hi = scoring.percentile_ci(scoring.bootstrap_rates(errors[None], words, 400, seed=t)[0])
        hits += lo <= 0.2 <= hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_paired_difference_p_values_and_ci():
    rng = np.random.default_rng(1)
    words = rng.integers(5, 15, 400)
    same_a, same_b = rng.binomial(words, 0.2), rng.binomial(words, 0.2)
    better = rng.binomial(words, 0.1)
    draws = scoring.bootstrap_rates(np.vstack([same_a, same_b, better]), words, 1000, seed=0)
    rates = np.vstack([same_a, same_b, better]).sum(1) / words.sum()
    null = scoring.paired_difference(rates[0], rates[1], draws[0], draws[1])
    real = scoring.paired_difference(rates[0], rates[2], draws[0], draws[2])
    assert null["p_value"] > 0.05 and null["ci"][0] < 0 < null["ci"][1]
    assert real["p_value"] < 0.01 and real["ci"][0] > 0.05  # true difference 0.1
    assert real["diff"] == pytest.approx(rates[0] - rates[2])
    assert 0 < real["p_value"] <= 1 and real["samples"] == 1000


def test_paired_difference_ci_coverage_on_known_difference():
    rng = np.random.default_rng(5)
    hits, trials = 0, 200
    for t in range(trials):
        words = rng.integers(3, 15, 150)
        a, b = rng.binomial(words, 0.25), rng.binomial(words, 0.15)
        d = scoring.bootstrap_rates(np.vstack([a, b]), words, 400, seed=t)
        lo, hi = scoring.paired_difference(a.sum() / words.sum(), b.sum() / words.sum(), d[0], d[1])["ci"]
        hits += lo <= 0.10 <= hi
    assert 0.88 <= hits / trials <= 0.995, hits / trials


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="expected"):
        scoring.bootstrap_rates(np.array([[1, 2]]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="no utterances"):
        scoring.bootstrap_rates(np.zeros((1, 0)), np.zeros(0))


# ---------------------------------------------------------------- speed
def test_rtf_and_rtfx_arithmetic():
    s = scoring.speed_summary({"audio_seconds": 30.0, "decode_seconds": [2.0, 4.0, 3.0], "device": "cpu",
                               "dtype": "float32", "batch_size": 8, "threads": 2, "warmup_batches": 2, "repeats": 3,
                               "clock": "model"})
    assert s["median_decode_seconds"] == 3.0
    assert s["rtf"] == pytest.approx(0.1) and s["rtfx"] == pytest.approx(10.0)
    assert s["rtfx_min"] == pytest.approx(7.5) and s["rtfx_max"] == pytest.approx(15.0)
    assert s["spread_pct"] == pytest.approx(100 * 2 / 3)
    assert s["threads"] == 2 and s["batch_size"] == 8 and s["clock"] == "model"


def test_speed_summary_rejects_missing_timings():
    with pytest.raises(ValueError, match="decode_seconds"):
        scoring.speed_summary({"audio_seconds": 3.0, "decode_seconds": []})
    with pytest.raises(ValueError, match="audio_seconds"):
        scoring.speed_summary({"audio_seconds": 0, "decode_seconds": [1.0]})


def test_score_run_metrics():
    from spx.spec import Spec

    spec = Spec.model_validate({"data": {"train": "t", "valid": "v", "test": "x"}})
    result = {"backend": "nemo",
              "hyps": [{"id": "1", "ref": "Hello, World!", "hyp": "hello word"}, {"id": "2", "ref": "Mr. Smith", "hyp": "mister smith"}],
              "speed": {"audio_seconds": 10.0, "decode_seconds": [1.0, 2.0, 0.5]},
              "train_summary": {"wall_seconds": 12.0}}
    m = scoring.score_run(result, spec)
    assert m["wer"] == pytest.approx(1 / 4) and m["substitutions"] == 1 and m["utterances"] == 2
    assert m["rtfx"] == pytest.approx(10.0) and m["rtf"] == pytest.approx(0.1)
    assert m["normalizer_info"]["name"] == "whisper_english" and m["train"]["wall_seconds"] == 12.0
