"""Batched generation (Engine.generate_batch): every row's text is EXACTLY the text the same prompt,
settings and seed give alone, whatever shares the batch and whatever the batch size.

The tiny model's window is 32 characters, so 60-100 characters run well past it (rolling window);
a small position_limit also exercises the re-basing re-prefill inside a batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from sgpt_cli.infer.engine import Engine, HostCache, SamplingParams
from sgpt_cli.errors import UsageError
from sgpt_cli.infer.onnx_model import OnnxModel

PROMPTS = ["ROMEO:", "", "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n",
           "K", "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n", "What, ho!", "MENENIUS:\nWhy",
           "Is't possible?"]


@pytest.fixture(scope="module")
def model(tiny_onnx) -> OnnxModel:
    return OnnxModel(tiny_onnx, device="cpu")


def requests(temperature: float, n: int = 8, **kw) -> list[tuple[str, SamplingParams]]:
    """Different prompts (empty, 1 char, past the window), lengths, seeds, stop strings."""
    out = []
    for i in range(n):
        stop = ("n", "\n\n") if i % 3 == 1 else ()  # stops early (common in the tiny model's text)
        out.append((PROMPTS[i % len(PROMPTS)], SamplingParams(
            temperature=temperature, max_tokens=40 + 9 * i, seed=100 + i, stop=stop,
            top_k=(5 if i % 4 == 2 else None), repetition_penalty=(1.3 if i % 4 == 3 else 1.0), **kw)))
    return out


def alone(engine: Engine, prompt: str, params: SamplingParams) -> tuple[str, str]:
    events = list(engine.stream(prompt, params))
    return "".join(e.text for e in events), events[-1].stats.stop_reason


def batched(engine: Engine, reqs, batch_size=None) -> dict[int, tuple[str, str, int]]:
    texts: dict[int, list[str]] = {i: [] for i in range(len(reqs))}
    done = {}
    for ev in engine.generate_batch(reqs, batch_size):
        assert ev.request not in done, "an event after the row's last one"
        texts[ev.request].append(ev.text)
        if ev.stats is not None:
            done[ev.request] = ("".join(texts[ev.request]), ev.stats.stop_reason, ev.stats.chars)
    return done


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_rows_equal_single_runs_exactly(model, temperature, batch_size):
    engine = Engine(model)
    reqs = requests(temperature)
    singles = [alone(engine, p, s) for p, s in reqs]
    got = batched(engine, reqs, batch_size)
    assert sorted(got) == list(range(len(reqs)))
    for i, (text, reason) in enumerate(singles):
        assert got[i][:2] == (text, reason), f"row {i} differs from its single run"
        assert got[i][2] == len(text)
    reasons = {r for _, r in singles}
    assert reasons == {"stop", "max_tokens"}  # some rows really stopped early, others ran to the end
    assert max(len(t) for t, _ in singles) > 2 * model.block_size  # well past the rolling window


def test_a_row_does_not_depend_on_what_shares_its_batch(model):
    """The same request among different company, at a different place, with a different batch size."""
    engine = Engine(model)
    target = ("JULIET:", SamplingParams(temperature=0.8, max_tokens=90, seed=7))
    others = requests(0.8, n=6)
    ref = alone(engine, *target)
    for company, size in ((others[:1], None), (others[2:], 2), (others, 4), (others[::-1] + others, 8)):
        reqs = company[:len(company) // 2] + [target] + company[len(company) // 2:]
        got = batched(engine, reqs, size)
        assert got[len(company) // 2][:2] == ref


def test_rows_join_and_leave_a_capped_batch_and_stay_exact(model):
    """More rows than --batch-size: rows leave when done (the last row moves into the freed one) and
    waiting rows join at the next step."""
    engine = Engine(model)
    reqs = [(p, SamplingParams(temperature=0.8, max_tokens=5 + 13 * i, seed=i)) for i, p in enumerate(PROMPTS * 2)]
    got = batched(engine, reqs, 3)
    for i, (p, s) in enumerate(reqs):
        assert got[i][:2] == alone(engine, p, s)


def test_positions_rebased_inside_a_batch_stay_exact(model):
    engine = Engine(model)
    engine.position_limit = 45  # re-base every few dozen characters
    reqs = requests(0.8, n=5)
    singles = [alone(engine, p, s) for p, s in reqs]
    got = batched(engine, reqs, 5)
    assert [got[i][:2] for i in range(5)] == singles


def test_samples_of_one_prompt_share_one_prefill_and_differ_by_seed(model, monkeypatch):
    engine = Engine(model)
    calls = []
    real = HostCache.prefill
    monkeypatch.setattr(HostCache, "prefill", lambda self, slot, ids: calls.append(len(ids)) or real(self, slot, ids))
    reqs = [("ROMEO:", SamplingParams(temperature=0.8, max_tokens=50, seed=3 + i)) for i in range(4)]
    got = batched(engine, reqs)
    assert calls == [len("ROMEO:")]  # prefilled once, its cache shared
    texts = [got[i][0] for i in range(4)]
    assert len(set(texts)) > 1
    monkeypatch.undo()
    assert texts == [alone(engine, p, s)[0] for p, s in reqs]


def test_batch_edge_cases(model):
    engine = Engine(model)
    assert list(engine.generate_batch([])) == []
    got = batched(engine, [("ROMEO:", SamplingParams(max_tokens=0)), ("ROMEO:", SamplingParams(max_tokens=3, seed=1))])
    assert got[0] == ("", "max_tokens", 0) and len(got[1][0]) == 3
    with pytest.raises(UsageError, match="--temperature"):
        SamplingParams(temperature=-1)


def test_ctrl_c_ends_running_rows_as_interrupted(model, monkeypatch):
    engine = Engine(model)
    real = HostCache.step
    steps = []

    def step(self, rows):
        steps.append(1)
        if len(steps) == 20:
            raise KeyboardInterrupt
        return real(self, rows)

    monkeypatch.setattr(HostCache, "step", step)
    reqs = [(p, SamplingParams(temperature=0.8, max_tokens=10 if i == 0 else 200, seed=i)) for i, p in enumerate(PROMPTS[:4])]
    events = list(engine.generate_batch(reqs, 2))
    final = {e.request: e.stats.stop_reason for e in events if e.stats}
    assert final[0] == "max_tokens"  # finished before Ctrl-C
    assert "interrupted" in final.values()
    assert 3 not in final or final[3] == "interrupted"  # rows never started get no event
    assert not engine.busy


def test_batch_pulls_requests_only_as_rows_free_up(model):
    """A stream of requests is read lazily: at most batch_size running and none waiting beyond them."""
    engine = Engine(model)
    pulled = []

    def source():
        for i in range(12):
            pulled.append(i)
            yield PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=5 + i, seed=i)

    seen = 0
    for ev in engine.generate_batch(source(), 3):
        seen += ev.stats is not None
        assert len(pulled) <= seen + 3
    assert seen == 12


def test_batched_rows_give_bitwise_the_logprobs_of_their_single_runs(model):
    """What the model believed of each character is a function of the row's own logits, which are
    bitwise its single run's: the numbers are equal, not close."""
    engine = Engine(model)
    reqs = requests(0.8, logprobs=3)

    def believed(events) -> dict[int, list]:
        out: dict[int, list] = {}
        for ev in events:
            out.setdefault(ev.request, []).extend(ev.logprobs)
        return out

    singles = [next(iter(believed(engine.stream(p, s)).values())) for p, s in reqs]
    together = believed(engine.generate_batch(reqs, 8))
    assert [together[i] for i in range(len(reqs))] == singles
    assert all(singles)


def test_rows_in_one_step_are_bitwise_their_single_steps(model):
    """The property the engine rests on, at the level of one step: rows at different positions in one
    call give bitwise the logits each gives alone."""
    rng = np.random.default_rng(0)
    W = model.block_size
    lengths = (1, 5, W - 1, 12)
    prompts = [rng.integers(0, model.tokenizer.vocab_size, n) for n in lengths]
    tokens = rng.integers(0, model.tokenizer.vocab_size, len(lengths))

    def run(sel):
        cache = HostCache(model, len(sel))
        for slot, b in enumerate(sel):
            cache.prefill(slot, prompts[b])
            cache.tokens[slot, 0], cache.positions[slot, 0] = tokens[b], lengths[b]
        return cache.step(len(sel)).copy()

    together = run([0, 1, 2, 3])
    for b in range(4):
        assert np.array_equal(run([b])[0], together[b])
