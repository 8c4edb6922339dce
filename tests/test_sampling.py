"""The next-character rule (sgpt_cli.infer.sampling): greedy, seeds, temperature, top-k, top-p,
repetition penalty and argument checks. numpy only, no model."""

from __future__ import annotations

import numpy as np
import pytest

from sgpt_cli.errors import UsageError
from sgpt_cli.infer.sampling import Sampler, sample_next_token
from sgpt_cli.settings import SamplingParams


def draws(logits, n=4000, seed=0, **kw) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([sample_next_token(logits, rng, **kw) for _ in range(n)])


def test_greedy_is_argmax_and_uses_no_randomness():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 65)).astype(np.float32)
    gen = np.random.default_rng(123)
    before = gen.bit_generator.state
    picks = [sample_next_token(row, gen, temperature=0.0) for row in logits]
    assert picks == list(np.argmax(logits, axis=1))
    assert gen.bit_generator.state == before


def test_sampling_does_not_change_the_logits():
    logits = np.linspace(-2, 2, 10).astype(np.float32)
    kept = logits.copy()
    sample_next_token(logits, np.random.default_rng(0), temperature=0.7, top_k=3, top_p=0.9,
                      repetition_penalty=2.0, history=[1, 9])
    assert np.array_equal(logits, kept)


def test_seed_reproducibility():
    logits = np.random.default_rng(1).standard_normal(65)
    assert np.array_equal(draws(logits, 300, seed=7), draws(logits, 300, seed=7))
    assert not np.array_equal(draws(logits, 300, seed=7), draws(logits, 300, seed=8))


def test_draws_follow_softmax_of_logits_over_temperature():
    logits = np.array([1.0, 0.0, -1.0, 0.5])
    for temperature in (0.5, 1.0, 2.0):
        got = np.bincount(draws(logits, 20000, temperature=temperature), minlength=4) / 20000
        want = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        assert np.abs(got - want).max() < 0.015, (temperature, got, want)


def test_top_k_samples_only_the_k_best_ids():
    logits = np.random.default_rng(2).standard_normal(65)
    best = set(np.argsort(-logits)[:5].tolist())
    seen = set(draws(logits, 3000, temperature=5.0, top_k=5).tolist())  # hot: all k get drawn
    assert seen == best
    assert set(draws(logits, 50, top_k=1).tolist()) == {int(np.argmax(logits))}


def test_top_k_larger_than_vocabulary_is_no_mask():
    logits = np.zeros(4)
    assert set(draws(logits, 500, top_k=100).tolist()) == {0, 1, 2, 3}


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: id 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = np.log(probs)
    assert set(draws(logits, 2000, top_p=0.45).tolist()) == {1}
    assert set(draws(logits, 2000, top_p=0.7).tolist()) == {1, 3}
    assert set(draws(logits, 2000, top_p=0.9).tolist()) == {1, 3, 2}
    assert set(draws(logits, 4000, top_p=1.0).tolist()) == {0, 1, 2, 3}
    # inside the nucleus the odds keep their ratio: 0.5 : 0.3
    got = draws(logits, 20000, top_p=0.7)
    assert abs((got == 1).mean() - 0.5 / 0.8) < 0.015


def test_repetition_penalty_moves_seen_ids_down_whatever_their_sign():
    # positive logits are divided, negative ones multiplied (CTRL / Hugging Face)
    pos = np.array([2.0, 1.5, 0.0])
    assert sample_next_token(pos, None, temperature=0, history=[0]) == 0
    assert sample_next_token(pos, None, temperature=0, repetition_penalty=1.5, history=[0]) == 1  # 2/1.5 < 1.5
    neg = np.array([-1.0, -1.2, -5.0])
    assert sample_next_token(neg, None, temperature=0, repetition_penalty=1.5, history=[0, 0]) == 1  # -1.5 < -1.2
    # a penalty below 1 favours what was seen
    assert sample_next_token(pos, None, temperature=0, repetition_penalty=0.5, history=[1]) == 1
    # it changes the sampled distribution, not only greedy picks
    flat = np.zeros(3) + 1.0
    got = draws(flat, 6000, repetition_penalty=3.0, history=[2])
    want = np.exp(1 / 3) / (2 * np.exp(1.0) + np.exp(1 / 3))  # logit 1 -> 1/3 for the seen id: ~0.20
    assert abs((got == 2).mean() - want) < 0.015


def test_sampler_matches_sample_next_token():
    logits = np.random.default_rng(3).standard_normal((200, 65))
    history = [3, 3, 10, 64]
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.3)
    ref_rng = np.random.default_rng(5)
    ref = [sample_next_token(row, ref_rng, history=history, **kw) for row in logits]
    sampler = Sampler(65, np.random.default_rng(5), **kw)
    sampler.add(history)
    assert [sampler(row) for row in logits] == ref
    sampler.remove([10, 64, 3, 3])
    assert not sampler.counts.any()


@pytest.mark.parametrize("kw, flag", [
    (dict(temperature=-0.1), "--temperature"),
    (dict(temperature=float("nan")), "--temperature"),
    (dict(top_k=0), "--top-k"),
    (dict(top_k=2.5), "--top-k"),
    (dict(top_p=0.0), "--top-p"),
    (dict(top_p=1.5), "--top-p"),
    (dict(repetition_penalty=0.0), "--repetition-penalty"),
    (dict(repetition_penalty=-1.0), "--repetition-penalty"),
    (dict(temperature=1e-310), "--temperature"),
    (dict(temperature=float("inf")), "--temperature"),
    (dict(repetition_penalty=1e-310), "--repetition-penalty"),
    (dict(repetition_penalty=1e300), "--repetition-penalty"),
])
def test_bad_arguments_raise_one_line_usage_errors(kw, flag):
    with pytest.raises(UsageError) as err:
        sample_next_token(np.zeros(3), np.random.default_rng(0), **kw)
    assert flag in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError):  # the way values reach a Sampler: SamplingParams, checked when made
        Sampler.from_params(3, SamplingParams(**kw))


EXTREMES = [0.001, 0.01, 1.0, 100.0]  # the ends of the declared temperature range, and between


@pytest.mark.parametrize("temperature", EXTREMES)
@pytest.mark.parametrize("penalty", [0.01, 1.0, 100.0])
def test_no_accepted_value_overflows_even_on_extreme_logits(temperature, penalty):
    """Every value the declaration accepts samples without a numpy warning, and picks a likely
    character, never the last id by accident (1e-310 once did: inf - inf = nan, so id V-1)."""
    big = float(np.finfo(np.float32).max)
    logits = np.array([-big, big, 0.5 * big, -1.0, 3.0], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        for history in ([], [1], [0, 1, 2, 3, 4]):
            for top_k, top_p in ((None, None), (2, None), (None, 1e-9), (1, 1.0)):
                pick = sample_next_token(logits, np.random.default_rng(0), temperature=temperature, top_k=top_k,
                                         top_p=top_p, repetition_penalty=penalty, history=history)
                assert pick != 4 or history, (temperature, penalty, history)  # 3.0 never beats 1.7e38 unpenalised
                if not history:
                    assert pick == 1  # the huge logit wins at any accepted temperature


def test_damaged_logits_do_not_pin_the_last_character():
    rng = np.random.default_rng(0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        assert sample_next_token(np.array([np.nan, 1.0, 0.0, np.nan]), rng, temperature=0.001) == 1
        assert sample_next_token(np.array([0.0, np.inf, 2.0, 1.0]), rng, temperature=0.5) == 1
        uniform = {sample_next_token(np.full(4, np.nan), rng, temperature=1.0) for _ in range(200)}
    assert uniform == {0, 1, 2, 3}


# --- min-p (Hugging Face's MinPLogitsWarper, llama.cpp's --min-p) -----------------------------------

def test_min_p_drops_what_is_less_likely_than_p_times_the_top():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    # 0.2 * 0.5 = 0.1: only the 0.05 character goes; the rest keep their relative odds
    seen = draws(logits, n=6000, temperature=1.0, min_p=0.2)
    assert set(seen) == {0, 1, 2}
    share = np.bincount(seen, minlength=4)[:3] / len(seen)
    assert np.allclose(share, probs[:3] / probs[:3].sum(), atol=0.03)
    assert set(draws(logits, n=500, temperature=1.0, min_p=1.0)) == {0}  # only the likeliest
    assert set(draws(logits, n=3000, temperature=1.0, min_p=0.0)) == {0, 1, 2, 3}  # 0: off


def test_min_p_comes_after_temperature_top_k_and_top_p():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    # after temperature 2 the odds flatten (0.4 vs 0.1 becomes 2:1), so min_p 0.45 keeps the last one
    assert 3 in set(draws(logits, n=4000, temperature=2.0, min_p=0.45))
    assert 3 not in set(draws(logits, n=4000, temperature=1.0, min_p=0.45))
    # top_k 2 first: min_p cannot bring back a character top-k dropped
    assert set(draws(logits, n=2000, temperature=1.0, top_k=2, min_p=0.01)) == {0, 1}


def test_min_p_is_checked_and_the_stream_sampler_takes_it_from_params():
    from sgpt_cli.settings import SamplingParams

    with pytest.raises(UsageError, match="--min-p must be a number from 0 to 1"):
        sample_next_token(np.zeros(3), np.random.default_rng(0), min_p=1.5)
    sampler = Sampler.from_params(4, SamplingParams(temperature=1.0, min_p=1.0, seed=3))
    assert sampler.min_p == 1.0
    assert {sampler(np.log(np.array([0.1, 0.6, 0.2, 0.1]))) for _ in range(200)} == {1}


def test_temperature_alone_draws_exactly_what_the_general_rule_draws():
    """Sampler's fast path for temperature alone is the same arithmetic as _choose: the same ids from
    the same seeds, with -inf, NaN and +inf scores too (those take the general path)."""
    from sgpt_cli.infer.sampling import _choose

    rng = np.random.default_rng(1)
    for trial in range(600):
        temperature = [1.0, 0.8, 0.0, 1.7, 0.001][trial % 5]
        logits = (rng.standard_normal(65) * rng.uniform(0.1, 30)).astype(np.float32)
        if trial % 7 == 0:
            logits[rng.integers(0, 65, 5)] = -np.inf
        if trial % 11 == 0:
            logits[3] = np.nan
        if trial % 13 == 0:
            logits[5] = np.inf
        fast = Sampler(65, np.random.default_rng(trial), temperature=temperature)
        assert fast.plain
        general = np.random.default_rng(trial)
        for _ in range(3):
            assert fast(logits) == _choose(logits, general, temperature, None, None, 1.0, None, None)
