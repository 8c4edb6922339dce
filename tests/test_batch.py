"""Batched generation (Engine.generate_batch): every row's text is EXACTLY the text the same prompt,
settings and seed give alone, whatever shares the batch and whatever the batch size.

The tiny model's window is 32 characters, so 60-100 characters run well past it (rolling window);
a small position_limit also exercises the re-basing re-prefill inside a batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from sgpt_cli.engine import DROP_EVERY, Engine, SamplingParams
from sgpt_cli.errors import UsageError
from sgpt_cli.onnx_model import OnnxModel

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
    text = "".join(engine.generate(prompt, params))
    return text, engine.last_stats.stop_reason


def batched(engine: Engine, reqs, batch_size=None) -> dict[int, tuple[str, str, int]]:
    texts: dict[int, list[str]] = {i: [] for i in range(len(reqs))}
    done = {}
    for ev in engine.generate_batch(reqs, batch_size):
        assert ev.index not in done, "an event after the row's last one"
        texts[ev.index].append(ev.piece)
        if ev.stats is not None:
            done[ev.index] = ("".join(texts[ev.index]), ev.stats.stop_reason, ev.stats.chars)
    return done


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_rows_equal_single_runs_exactly(model, temperature, batch_size):
    engine = Engine(model)
    assert engine.padded  # this export has attention_mask: the batched path really runs
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
    """More rows than --batch-size: rows leave when done and waiting rows join after a cache cut."""
    engine = Engine(model)
    reqs = [(p, SamplingParams(temperature=0.8, max_tokens=5 + 13 * i, seed=i)) for i, p in enumerate(PROMPTS * 2)]
    got = batched(engine, reqs, 3)
    for i, (p, s) in enumerate(reqs):
        assert got[i][:2] == alone(engine, p, s)
    assert max(s.max_tokens for _, s in reqs) > DROP_EVERY * 4


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
    real = engine._prefill
    monkeypatch.setattr(engine, "_prefill", lambda ids: calls.append(len(ids)) or real(ids))
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
        engine.generate_batch([("x", SamplingParams(temperature=-1))])
    with pytest.raises(UsageError, match="--batch-size"):
        engine.generate_batch([("x", SamplingParams())], batch_size=0)


def test_ctrl_c_ends_running_rows_as_interrupted(model, monkeypatch):
    engine = Engine(model)
    real = engine.session_run
    steps = []

    def run(feed):
        steps.append(1)
        if len(steps) == 20:
            raise KeyboardInterrupt
        return real(feed)

    monkeypatch.setattr(engine, "session_run", run)
    reqs = [(p, SamplingParams(temperature=0.8, max_tokens=10 if i == 0 else 200, seed=i)) for i, p in enumerate(PROMPTS[:4])]
    events = list(engine.generate_batch(reqs, 2))
    final = {e.index: e.stats.stop_reason for e in events if e.stats}
    assert final[0] == "max_tokens"  # finished before Ctrl-C
    assert "interrupted" in final.values()
    assert 3 not in final or final[3] == "interrupted"  # rows never started get no event


def test_a_model_without_attention_mask_runs_rows_one_by_one_exactly(model):
    engine = Engine(model)
    engine.padded = False  # as for an export without attention_mask (the old shipped model)
    reqs = requests(0.8, n=4)
    got = batched(engine, reqs, 4)
    for i, (p, s) in enumerate(reqs):
        assert got[i][:2] == alone(engine, p, s)


def test_the_shipped_model_without_attention_mask_still_batches(tmp_path):
    """models/shakespeare.onnx predates attention_mask: batches run row by row, equal to single runs."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "models" / "shakespeare.onnx"
    shipped = OnnxModel(path, device="cpu")
    engine = Engine(shipped)
    if shipped.has_attention_mask:
        assert engine.padded
    reqs = [("ROMEO:", SamplingParams(temperature=0.8, max_tokens=20, seed=i)) for i in range(3)]
    got = batched(engine, reqs)
    assert [got[i][0] for i in range(3)] == [alone(engine, p, s)[0] for p, s in reqs]


def test_padded_decode_logits_equal_single_rows_bitwise(model):
    """The property the engine rests on, at the level of one forward: rows of one width, left-padded,
    give bitwise the logits each gives alone."""
    engine = Engine(model)
    rng = np.random.default_rng(0)
    W = model.block_size
    rows = []
    for n in (1, 5, W - 1, 12):
        _, cache = engine._prefill(rng.integers(0, model.tokenizer.vocab_size, n))
        rows.append(engine._padded(cache, W - 1 + 3))
    tokens = rng.integers(0, model.tokenizer.vocab_size, (len(rows), 1))
    positions = np.array([[1], [5], [W - 1], [12]])

    def run(sel):
        feed = dict(zip(engine._names, [np.concatenate([rows[b][0][i] for b in sel]) for i in range(len(engine._names))]))
        mask = np.concatenate([np.concatenate([rows[b][1] for b in sel]), np.ones((len(sel), 1), np.int64)], axis=1)
        feed.update(input_ids=tokens[sel], position_ids=positions[sel], attention_mask=mask)
        return engine.session_run(feed)[0][:, 0]

    together = run([0, 1, 2, 3])
    for b in range(4):
        assert np.array_equal(run([b])[0], together[b])
