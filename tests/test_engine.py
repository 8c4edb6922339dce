"""The generation engine (sgpt_cli.infer.engine) on the tiny exported model, and model lookup
(sgpt_cli.infer.model_lookup).

References are computed independently of the engine: a full pass of the model over the whole text
for every character (the nanoGPT way), and past the window a ring cache driven by hand through plain
`session.run` (no I/O binding, no engine), through the same ONNX file.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sgpt_cli.infer.engine import DeviceCache, Engine, GenerationStats, HostCache, SamplingParams
from sgpt_cli.errors import SgptError, UsageError
from sgpt_cli.infer.onnx_model import OnnxModel
from sgpt_cli.infer.sampling import sample_next_token
from sgpt_cli.infer.stops import StopMatcher

from conftest import run_env


@pytest.fixture(scope="module")
def model(tiny_onnx) -> OnnxModel:
    return OnnxModel(tiny_onnx, device="cpu")


@pytest.fixture()
def engine(model) -> Engine:
    return Engine(model)


def run(engine: Engine, prompt: str = "ROMEO:", **kw) -> tuple[str, GenerationStats]:
    """One request alone: its text and the stats of its last event (the one way stats are given)."""
    events = list(engine.stream(prompt, SamplingParams(**kw)))
    assert all(e.stats is None for e in events[:-1]) and events[-1].stats is not None
    return "".join(e.text for e in events), events[-1].stats


def gen(engine: Engine, prompt: str = "ROMEO:", **kw) -> str:
    return run(engine, prompt, **kw)[0]


def full_pass_logits(model: OnnxModel, ids: list[int]) -> np.ndarray:
    """Last-position logits of one cache-free pass over ids (at most block_size of them)."""
    logits, _ = model.forward(np.array([ids], dtype=np.int64))
    return logits[0, -1]


def pick(logits: np.ndarray, rng) -> int:
    """Greedy when rng is None, else a temperature-1 draw by the engine's rule."""
    return int(np.argmax(logits)) if rng is None else sample_next_token(logits, rng, temperature=1.0)


def full_pass_reference(model: OnnxModel, prompt: str, n: int, seed: int | None = None) -> str:
    """Each character from one cache-free pass over the whole text so far (within one window)."""
    rng = None if seed is None else np.random.default_rng(seed)
    ids = list(model.tokenizer.encode(prompt))
    for _ in range(n):
        ids.append(pick(full_pass_logits(model, ids), rng))
    return model.tokenizer.decode(ids[-n:]) if n else ""


# --- correctness of the cache -------------------------------------------------------------

def test_prefill_then_in_place_steps_equal_a_full_pass(model):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.tokenizer.vocab_size, model.block_size)
    expected, _ = model.forward(ids[None])  # (1, T, V)
    cache = HostCache(model, 2)
    got = [cache.prefill(1, ids[:5])]
    for t in range(5, model.block_size):
        cache.tokens[0, 0] = cache.tokens[1, 0] = ids[t]
        cache.positions[0, 0] = cache.positions[1, 0] = t
        got.append(cache.step(2)[1].copy())
    assert np.abs(np.stack(got) - expected[0, 4:]).max() < 1e-4
    assert np.abs(cache.buffers[0][1]).sum() > 0  # ONNX Runtime wrote into the numpy arrays themselves


def test_device_cache_equals_the_host_cache(model):
    """DeviceCache is the CUDA path; here its OrtValues live on the CPU, which tests everything but
    the placement: binding, the placeholder rows, the graph that puts a prefilled row in place."""
    W = model.block_size
    ids = np.random.default_rng(1).integers(0, model.tokenizer.vocab_size, 3 * W)
    host, device = HostCache(model, 3), DeviceCache(model, 3)
    for cache in (host, device):
        cache.got = [cache.prefill(2, ids[:7])]
        for t in range(7, len(ids)):
            cache.tokens[2, 0], cache.positions[2, 0] = ids[t], t
            cache.got.append(cache.step(3)[2].copy())
    assert np.array_equal(np.stack(host.got), np.stack(device.got))


def test_engine_on_device_buffers_generates_the_same_text(model):
    a = gen(Engine(model), temperature=1.0, seed=4, max_tokens=3 * model.block_size)
    device = Engine(model, cache="device")
    assert device.device_cache and not Engine(model).device_cache  # auto on the CPU: host arrays
    assert gen(device, temperature=1.0, seed=4, max_tokens=3 * model.block_size) == a
    assert gen(device, temperature=1.0, seed=4, max_tokens=3 * model.block_size) == a  # its rows are reused


def test_greedy_determinism_and_equal_to_full_pass_argmax(engine, model):
    n = model.block_size - len("ROMEO:")  # the whole window, no rolling yet
    a = gen(engine, temperature=0, max_tokens=n)
    b = gen(engine, temperature=0, max_tokens=n)
    assert a == b and len(a) == n
    assert a == full_pass_reference(model, "ROMEO:", n)
    sampled = gen(engine, temperature=1.0, seed=9, max_tokens=n)
    assert sampled == full_pass_reference(model, "ROMEO:", n, seed=9)


def test_top_k_one_is_greedy(engine):
    assert gen(engine, temperature=1.0, top_k=1, seed=3, max_tokens=20) == gen(engine, temperature=0, max_tokens=20)


def test_seed_reproducibility(engine):
    a = gen(engine, temperature=1.0, seed=1, max_tokens=60)
    assert a == gen(engine, temperature=1.0, seed=1, max_tokens=60)
    assert a != gen(engine, temperature=1.0, seed=2, max_tokens=60)
    assert len(a) == 60


def test_unseeded_runs_differ(engine):
    assert gen(engine, temperature=1.0, max_tokens=60) != gen(engine, temperature=1.0, max_tokens=60)


def sampled_with_logits(engine, model, prompt, **kw) -> list[tuple[int, np.ndarray]]:
    """(sampled id, full-pass logits it was drawn from) for each generated character."""
    text = gen(engine, prompt, **kw)
    ids = list(model.tokenizer.encode(prompt))
    out = []
    for ch in text:
        out.append((model.tokenizer.stoi[ch], full_pass_logits(model, ids)))
        ids.append(model.tokenizer.stoi[ch])
    return out


def test_top_k_only_samples_the_k_best(engine, model):
    pairs = sampled_with_logits(engine, model, "ROMEO:", temperature=3.0, top_k=3, seed=0, max_tokens=24)
    for nxt, logits in pairs:
        assert nxt in np.argsort(-logits)[:3]


def test_top_p_only_samples_the_nucleus(engine, model):
    seen_outside_top1 = False
    for nxt, logits in sampled_with_logits(engine, model, "ROMEO:", temperature=1.5, top_p=0.6, seed=0, max_tokens=24):
        p = np.exp((logits - logits.max()) / 1.5)  # the nucleus of the tempered distribution
        p /= p.sum()
        order = np.argsort(-p)
        nucleus = order[:int(np.searchsorted(np.cumsum(p[order]), 0.6)) + 1]
        assert nxt in nucleus
        seen_outside_top1 |= nxt != order[0]
    assert seen_outside_top1  # the mask is not simply greedy


def longest_run(text: str) -> int:
    best = run = 1
    for a, b in zip(text, text[1:]):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return best


def test_repetition_penalty_breaks_repeats(engine):
    plain = gen(engine, temperature=0, max_tokens=60)
    penalised = gen(engine, temperature=0, max_tokens=60, repetition_penalty=3.0)
    assert plain != penalised
    assert longest_run(penalised) < longest_run(plain) or len(set(penalised)) > len(set(plain))


# --- stop strings, lengths, stats ----------------------------------------------------------------

def test_stop_string_ends_generation_before_it(engine):
    text = gen(engine, temperature=1.0, seed=5, max_tokens=120)
    stop = text[30:33]
    first = text.find(stop)
    got, stats = run(engine, temperature=1.0, seed=5, max_tokens=120, stop=(stop,))
    assert got == text[:first]
    assert stats.stop_reason == "stop" and stats.chars == first


def test_partial_stop_match_that_fails_is_yielded(engine):
    text = gen(engine, temperature=1.0, seed=5, max_tokens=120)
    c = text[10]
    follower = next(x for x in engine.model.tokenizer.chars if c + x not in text)
    events = list(engine.stream("ROMEO:", SamplingParams(temperature=1.0, seed=5, max_tokens=120,
                                                         stop=(c + follower + "zz",))))
    assert "".join(e.text for e in events) == text
    assert any(len(e.text) > 1 for e in events)  # held-back text came out when the match failed
    assert events[-1].stats.stop_reason == "max_tokens"


def test_stop_matcher_catches_strings_split_across_pieces():
    m = StopMatcher(("END", "\n\n"))
    out = [m.push(c) for c in "abEN"]
    assert out == [("a", False), ("b", False), ("", False), ("", False)]
    assert m.push("D") == ("", True)
    m = StopMatcher(("END",))
    assert [m.push(c) for c in "aEEND"] == [("a", False), ("", False), ("E", False), ("", False), ("", True)]
    m = StopMatcher(("abc", "b"))
    assert m.push("a") == ("", False) and m.push("b") == ("a", True)  # the earliest stop wins
    m = StopMatcher(("xy",))
    assert m.push("x") == ("", False) and m.flush() == "x"


@pytest.mark.parametrize("n", [0, 1, 17])
def test_max_tokens_gives_exactly_n_characters(engine, n):
    text, stats = run(engine, temperature=1.0, seed=0, max_tokens=n)
    assert len(text) == n
    assert isinstance(stats, GenerationStats)
    assert stats.chars == n and stats.stop_reason == "max_tokens"
    assert 0 <= stats.ttft_s <= stats.seconds


def test_stats_describe_the_run(engine):
    _, s = run(engine, "ROMEO:", temperature=1.0, seed=0, max_tokens=40)
    assert s.prompt_chars == 6 and s.chars == 40 and s.chars_per_s > 0
    assert s.chars_per_s == pytest.approx(s.chars / s.seconds)


# --- past the window ---------------------------------------------------------------------

def ring_reference(model: OnnxModel, prompt: str, n: int, seed: int | None = None) -> str:
    """Decoding with the ring cache driven by hand (plain session.run, which copies it): one id a step
    at growing absolute positions; the graph keeps the latest block_size of them."""
    rng = None if seed is None else np.random.default_rng(seed)
    ids = model.tokenizer.encode(prompt)[None]
    logits, past = model.forward(ids)
    pos, out = ids.shape[1], []
    for _ in range(n):
        nxt = pick(logits[0, -1], rng)
        out.append(model.tokenizer.chars[nxt])
        logits, past = model.forward(np.array([[nxt]]), past, np.array([[pos]]))
        pos += 1
    return "".join(out)


def test_generation_beyond_block_size_rolls_the_window(engine, model):
    W = model.block_size
    greedy = gen(engine, "R", temperature=0, max_tokens=3 * W)
    assert len(greedy) == 3 * W
    # inside the first window the cache changes nothing: equal to full passes
    assert greedy[:W - 1] == full_pass_reference(model, "R", W - 1)
    assert greedy == ring_reference(model, "R", 3 * W)
    # sampled text is far more sensitive to wrong positions or a wrong window than greedy text
    sampled = gen(engine, "R", temperature=1.0, seed=0, max_tokens=3 * W)
    assert sampled[:W - 1] == full_pass_reference(model, "R", W - 1, seed=0)
    assert sampled == ring_reference(model, "R", 3 * W, seed=0)


def test_position_rebase_keeps_generating(engine, model):
    W = model.block_size
    reference = gen(engine, "R", temperature=1.0, seed=0, max_tokens=4 * W)
    engine.position_limit = 2 * W
    rebased = gen(engine, "R", temperature=1.0, seed=0, max_tokens=4 * W)
    assert len(rebased) == 4 * W
    assert rebased[:2 * W - 1] == reference[:2 * W - 1]  # identical until the first re-base


def test_prompt_longer_than_block_size_uses_its_tail(engine, model):
    rng = np.random.default_rng(4)
    long = "".join(rng.choice(model.tokenizer.chars, 3 * model.block_size))
    kw = dict(temperature=1.0, seed=2, max_tokens=40)
    a, stats = run(engine, long, **kw)
    assert stats.prompt_chars == model.block_size
    assert a == gen(engine, long[-model.block_size:], **kw)
    assert list(engine.prompt_ids(long)) == list(model.tokenizer.encode(long[-model.block_size:]))


# --- odd prompts -----------------------------------------------------------------------------------

def test_unknown_characters_are_dropped(engine):
    kw = dict(temperature=1.0, seed=2, max_tokens=40)  # sampled text depends on the context
    assert gen(engine, "RO\u2603ME\u00e9O", **kw) == gen(engine, "ROMEO", **kw)
    assert list(engine.prompt_ids("RO\u2603ME\u00e9O")) == list(engine.tokenizer.encode("ROMEO"))


def test_empty_prompt_starts_from_a_line_break(engine):
    kw = dict(temperature=1.0, seed=2, max_tokens=40)
    reference = gen(engine, "\n", **kw)
    assert gen(engine, "", **kw) == reference
    assert gen(engine, "\u2603\u2603", **kw) == reference
    assert list(engine.prompt_ids("")) == [engine.tokenizer.stoi["\n"]]
    assert run(engine, "", **kw)[1].prompt_chars == 1


# --- what the model believed: logprobs ---------------------------------------------------------------

def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def believed(engine, prompt="ROMEO:", **kw) -> tuple[list, list]:
    """(events, every TokenLogprob given, in order) of one request alone."""
    events = list(engine.stream(prompt, SamplingParams(**kw)))
    return events, [t for e in events for t in e.logprobs]


def test_logprobs_are_the_models_own_softmax_one_per_character_given_out(engine, model):
    """The raw logits' distribution, not the tempered, cut one the draw used (as OpenAI and vLLM
    report): a full pass over the text so far gives the same numbers."""
    n = model.block_size - len("ROMEO:")
    events, entries = believed(engine, temperature=1.7, top_k=4, seed=3, max_tokens=n, logprobs=3)
    text = "".join(e.text for e in events)
    assert all("".join(t.token for t in e.logprobs) == e.text for e in events)
    assert len(entries) == len(text) == n
    ids = list(model.tokenizer.encode("ROMEO:"))
    for t, ch in zip(entries, text):
        ref = log_softmax(full_pass_logits(model, ids))
        assert t.token == ch and abs(t.logprob - ref[model.tokenizer.stoi[ch]]) < 1e-4
        assert [c for c, _ in t.top] == [model.tokenizer.shown[i] for i in np.argsort(-ref, kind="stable")[:3]]
        assert [lp for _, lp in t.top] == sorted((lp for _, lp in t.top), reverse=True)
        assert t.top[0][1] >= t.logprob
        ids.append(model.tokenizer.stoi[ch])
    assert any(t.token != t.top[0][0] for t in entries)  # at 1.7 some choices were not the likeliest


def test_logprobs_change_no_character_and_cost_nothing_when_off(engine, monkeypatch):
    import sgpt_cli.infer.engine as engine_module

    events, entries = believed(engine, seed=8, max_tokens=40, logprobs=0)
    assert all(t.top == () for t in entries)
    plain = list(engine.stream("ROMEO:", SamplingParams(seed=8, max_tokens=40)))
    assert "".join(e.text for e in plain) == "".join(e.text for e in events)
    assert all(e.logprobs is None for e in plain)

    def never(*args):
        raise AssertionError("logprobs computed for a request that asked for none")

    monkeypatch.setattr(engine_module, "believed", never)
    assert gen(engine, seed=8, max_tokens=40) == "".join(e.text for e in plain)


def test_logprobs_follow_the_text_through_held_back_and_dropped_stop_strings(engine):
    full_events, full = believed(engine, temperature=1.0, seed=5, max_tokens=120, logprobs=2)
    text = "".join(e.text for e in full_events)
    stop = text[30:33]
    events, entries = believed(engine, temperature=1.0, seed=5, max_tokens=120, stop=(stop,), logprobs=2)
    got = "".join(e.text for e in events)
    assert got == text[:text.find(stop)] and entries == full[:len(got)]  # the stop's characters dropped
    c = text[10]
    follower = next(x for x in engine.model.tokenizer.chars if c + x not in text)
    events, entries = believed(engine, temperature=1.0, seed=5, max_tokens=120, stop=(c + follower + "zz",),
                               logprobs=2)
    assert any(len(e.text) > 1 for e in events)  # held-back characters came out together...
    assert all("".join(t.token for t in e.logprobs) == e.text for e in events)  # ...with their numbers
    assert entries == full


def test_a_piece_of_several_characters_is_cut_where_the_text_given_out_ends(model):
    from sgpt_cli.infer.engine import _Run
    from sgpt_cli.infer.logprobs import TokenLogprob

    run = _Run(0, np.array([0]), SamplingParams(logprobs=1), model.tokenizer.vocab_size, model.block_size)
    run.held.extend([TokenLogprob("ab", -0.5, (("a", -0.1),)), TokenLogprob("c", -0.2)])
    assert run.take_logprobs(1) == (TokenLogprob("a", -0.5, (("a", -0.1),)),)
    assert run.take_logprobs(2) == (TokenLogprob("b", -0.5, (("a", -0.1),)), TokenLogprob("c", -0.2))
    assert _Run(0, np.array([0]), SamplingParams(), 3, 8).take_logprobs(1) is None


def test_impossible_characters_get_openais_floor_not_minus_infinity():
    from sgpt_cli.infer.logprobs import LOGPROB_FLOOR, believed as believe

    logits = np.array([0.0, np.nan, -np.inf, 1.0], dtype=np.float32)
    entry = believe(logits, 1, 4, list("abcd"))
    assert entry.logprob == LOGPROB_FLOOR and entry.top[0][0] == "d" and np.isfinite([lp for _, lp in entry.top]).all()


# --- requests: submit, step, cancel --------------------------------------------------------------------

def drain(engine: Engine, limit: int = 10_000) -> dict[int, tuple[str, GenerationStats]]:
    texts, done = {}, {}
    for _ in range(limit):
        if not engine.busy:
            break
        for e in engine.step():
            assert e.request not in done, "an event after the request's last one"
            texts[e.request] = texts.get(e.request, "") + e.text
            if e.stats is not None:
                done[e.request] = (texts[e.request], e.stats)
    assert not engine.busy
    return done


def test_requests_join_a_running_batch_at_any_step_and_stay_exact(model):
    engine = Engine(model, max_rows=3)
    reqs = [("ROMEO:", dict(seed=1, max_tokens=70)), ("K", dict(seed=2, max_tokens=45)),
            ("", dict(seed=3, max_tokens=90, temperature=0)), ("JULIET:\nO", dict(seed=4, max_tokens=30))]
    alone = [run(Engine(model), p, **kw)[0] for p, kw in reqs]
    ids = [engine.submit(*_req(reqs[0]))]
    texts: dict[int, str] = {}
    for step in range(400):  # one more request joins every 7 steps, while others run
        if step % 7 == 6 and len(ids) < len(reqs):
            ids.append(engine.submit(*_req(reqs[len(ids)])))
        for e in engine.step():
            texts[e.request] = texts.get(e.request, "") + e.text
        assert engine.rows <= 3
        if not engine.busy and len(ids) == len(reqs):
            break
    assert [texts[i] for i in ids] == alone


def _req(item):
    prompt, kw = item
    return prompt, SamplingParams(**kw)


def test_a_cancelled_request_frees_its_row_at_the_next_step(model):
    engine = Engine(model, max_rows=1)
    first = engine.submit("ROMEO:", SamplingParams(seed=1, max_tokens=10_000))
    second = engine.submit("K", SamplingParams(seed=2, max_tokens=20))
    for _ in range(5):
        engine.step()
    assert engine.rows == 1 and engine.queued == 1  # the second waits for the only row
    engine.cancel(first)
    done = drain(engine)
    assert done[first][1].stop_reason == "cancelled"
    assert done[second] == (gen(Engine(model), "K", seed=2, max_tokens=20), done[second][1])
    engine.cancel(12345)  # unknown numbers are ignored
    assert drain(engine) == {}


def test_a_waiting_request_can_be_cancelled_before_it_runs(model):
    engine = Engine(model, max_rows=1)
    engine.submit("ROMEO:", SamplingParams(seed=1, max_tokens=30))
    waiting = engine.submit("K", SamplingParams(seed=2, max_tokens=30))
    engine.cancel(waiting)
    done = drain(engine)
    assert done[waiting] == ("", done[waiting][1]) and done[waiting][1].stop_reason == "cancelled"


# --- interruption and bad parameters -------------------------------------------------------------------

def test_a_consumer_that_stops_iterating_leaves_nothing_in_flight(engine):
    events = engine.stream("ROMEO:", SamplingParams(temperature=1.0, seed=0, max_tokens=100))
    got = [next(events) for _ in range(3)]
    events.close()
    assert len("".join(e.text for e in got)) == 3
    assert not engine.busy
    assert gen(engine, temperature=1.0, seed=0, max_tokens=5) == gen(Engine(engine.model), temperature=1.0, seed=0,
                                                                      max_tokens=5)


class InterruptingSession:
    """Forwards to the real session; raises `error` on run number `at` (Ctrl-C mid-decode, or a
    failure inside ONNX Runtime)."""

    def __init__(self, session, at, error=KeyboardInterrupt):
        self.session, self.at, self.calls, self.error = session, at, 0, error

    def run_with_iobinding(self, *args, **kw):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.session.run_with_iobinding(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_ctrl_c_ends_generation_quietly_with_stats(tiny_onnx):
    real = OnnxModel(tiny_onnx, device="cpu")
    model = OnnxModel(tiny_onnx, session=InterruptingSession(real.session, at=6))
    text, stats = run(Engine(model), temperature=0, max_tokens=50)
    assert len(text) == 5  # prefill + 4 steps gave 5 characters; the 6th run was interrupted
    assert text == gen(Engine(real), temperature=0, max_tokens=5)
    assert stats.stop_reason == "interrupted" and stats.chars == 5


def test_runtime_failure_is_a_one_line_error(tiny_onnx):
    real = OnnxModel(tiny_onnx, device="cpu")
    boom = Exception("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad\nlong C++ details")
    engine = Engine(OnnxModel(tiny_onnx, session=InterruptingSession(real.session, at=3, error=boom)))
    pieces = []
    with pytest.raises(SgptError) as err:
        for event in engine.stream("ROMEO:", SamplingParams(max_tokens=50, seed=0)):
            pieces.append(event.text)
    assert "RUNTIME_EXCEPTION" in str(err.value) and "sgpt export" in str(err.value) and "\n" not in str(err.value)
    assert len("".join(pieces)) == 1 and not engine.busy  # the text of the failing step is not given


class HidingSession:
    """A session whose graph lacks one of the interface's inputs."""

    def __init__(self, session, hide):
        self.session, self.hide = session, hide

    def get_inputs(self):
        return [i for i in self.session.get_inputs() if i.name != self.hide]

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_graph_without_the_cache_interface_is_refused(tiny_onnx):
    real = OnnxModel(tiny_onnx, device="cpu")
    with pytest.raises(SgptError, match=r"past_key_values.1.value.*sgpt export"):  # refused on opening
        Engine(OnnxModel(tiny_onnx, session=HidingSession(real.session, "past_key_values.1.value")))


@pytest.mark.parametrize("kw, flag", [
    (dict(max_tokens=-1), "--max-tokens"),
    (dict(max_tokens=2.5), "--max-tokens"),
    (dict(max_tokens=float("inf")), "--max-tokens"),
    (dict(top_k=float("inf")), "--top-k"),
    (dict(temperature=-1.0), "--temperature"),
    (dict(top_k=0), "--top-k"),
    (dict(top_p=0.0), "--top-p"),
    (dict(repetition_penalty=0.0), "--repetition-penalty"),
    (dict(seed=-3), "--seed"),
    (dict(stop=("",)), "--stop"),
])
def test_sampling_params_are_valid_by_construction(kw, flag):
    with pytest.raises(UsageError) as err:
        SamplingParams(**kw)
    assert flag in str(err.value) and "\n" not in str(err.value)
    assert SamplingParams(max_tokens=5.0, stop=["a"]) == SamplingParams(max_tokens=5, stop=("a",))  # normalised


# --- model lookup ---------------------------------------------------------------------------------------

@pytest.fixture()
def lookup_world(tmp_path, monkeypatch):
    """Empty candidate files for every source; cwd in tmp; the shipped model redirected into tmp."""
    from sgpt_cli.infer import model_lookup

    files = {name: tmp_path / name for name in ("explicit.onnx", "env.onnx", "shipped.onnx")}
    for f in files.values():
        f.write_bytes(b"")
    work = tmp_path / "work"
    (work / "export").mkdir(parents=True)
    (work / "export" / "model.onnx").write_bytes(b"")
    monkeypatch.chdir(work)
    monkeypatch.setattr(model_lookup, "shipped_model_candidates",
                        lambda: [tmp_path / "missing" / "shakespeare.onnx", files["shipped.onnx"]])
    return files, work


def test_model_lookup_precedence(lookup_world, monkeypatch):
    from pathlib import Path

    from sgpt_cli.infer.model_lookup import find_model

    files, work = lookup_world
    monkeypatch.setenv("SGPT_MODEL", str(files["env.onnx"]))
    assert find_model(files["explicit.onnx"]) == (files["explicit.onnx"], "--model")
    assert find_model(str(files["explicit.onnx"])) == (files["explicit.onnx"], "--model")
    assert find_model(None) == (files["env.onnx"], "$SGPT_MODEL")
    monkeypatch.delenv("SGPT_MODEL")
    # an exported ./export/model.onnx is never used unasked: the shipped model is
    assert (work / "export" / "model.onnx").exists()
    assert find_model(None) == (files["shipped.onnx"], "shipped")
    assert isinstance(find_model(None)[0], Path)


def test_model_lookup_errors(lookup_world, monkeypatch, tmp_path):
    from sgpt_cli.infer import model_lookup
    from sgpt_cli.infer.model_lookup import find_model

    with pytest.raises(SgptError, match="nope.onnx.*--model.*does not exist"):
        find_model(tmp_path / "nope.onnx")
    with pytest.raises(SgptError, match="folder"):
        find_model(tmp_path)
    monkeypatch.setenv("SGPT_MODEL", str(tmp_path / "gone.onnx"))
    with pytest.raises(SgptError, match=r"gone.onnx.*\$SGPT_MODEL"):
        find_model(None)
    monkeypatch.delenv("SGPT_MODEL")
    (lookup_world[1] / "export" / "model.onnx").unlink()
    monkeypatch.setattr(model_lookup, "shipped_model_candidates", lambda: [tmp_path / "none.onnx"])
    with pytest.raises(SgptError) as err:
        find_model(None)
    message = str(err.value)
    assert "sgpt export" in message and "--model" in message and "\n" not in message


def test_shipped_model_candidates_are_the_checkout_then_the_install_prefix():
    import sgpt_cli
    from pathlib import Path

    from sgpt_cli.infer.model_lookup import SHIPPED_MODEL_NAME, shipped_model_candidates

    first, second = shipped_model_candidates()
    assert first == Path(sgpt_cli.__file__).resolve().parents[1] / "models" / SHIPPED_MODEL_NAME
    assert second == Path(sys.prefix) / "share" / "sgpt" / "models" / SHIPPED_MODEL_NAME


def test_model_lookup_and_sampling_load_neither_onnxruntime_nor_torch():
    code = ("import sys, sgpt_cli.infer.model_lookup, sgpt_cli.infer.sampling; "
            "print([m for m in ('onnxruntime', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), check=True)
    assert out.stdout.strip() == "[]"


# --- the cache's span (slots bound) and split steps ------------------------------------------------

@pytest.fixture(scope="module")
def wide(wide_onnx) -> OnnxModel:
    return OnnxModel(wide_onnx, device="cpu")


def decode_logits(model: OnnxModel, prompts: list[np.ndarray], steps: int, fit: bool) -> list[np.ndarray]:
    """Each prompt's logits, prefilled then fed `steps` random ids, all rows in one cache; with fit,
    the span follows the rows as the engine sets it (else the whole window throughout)."""
    cache = HostCache(model, len(prompts))
    slots = [cache.take() for _ in prompts]
    rng = np.random.default_rng(7)
    feed = rng.integers(0, model.vocab_size, (len(prompts), steps))
    if fit:
        cache.fit(max(len(p) for p in prompts))
    got = [[cache.prefill(s, p)] for s, p in zip(slots, prompts)]
    for t in range(steps):
        for s, p in zip(slots, prompts):
            cache.tokens[s, 0], cache.positions[s, 0] = feed[s, t], len(p) + t
        if fit:
            cache.fit(max(len(p) for p in prompts) + t + 1)
        logits = cache.step(len(prompts))
        for s in slots:
            got[s].append(logits[s].copy())
    return [np.stack(g) for g in got]


def test_a_row_has_the_same_bits_whatever_span_its_cache_is_bound_with(wide):
    """Alone with a span that grows 32, 64, 96, 112 (then rolls), in a batch whose span is set by a
    longer row, and with the whole window throughout: bitwise the same logits, step after step."""
    rng = np.random.default_rng(3)
    short, long = rng.integers(0, wide.vocab_size, 5), rng.integers(0, wide.vocab_size, 70)
    grown = decode_logits(wide, [short], 150, fit=True)[0]
    whole = decode_logits(wide, [short], 150, fit=False)[0]
    beside_long = decode_logits(wide, [short, long], 150, fit=True)[0]
    assert np.array_equal(grown, whole) and np.array_equal(grown, beside_long)


def test_the_span_grows_with_the_rows_and_shrinks_when_they_leave(wide, monkeypatch):
    spans = []
    relayout = HostCache._relayout
    monkeypatch.setattr(HostCache, "_relayout", lambda self, span: (spans.append(span), relayout(self, span)))
    reqs = [("ROMEO:", dict(seed=1, max_tokens=100)), ("K", dict(seed=2, max_tokens=20)),
            ("JULIET:", dict(seed=3, max_tokens=10))]
    alone = [run(Engine(wide), p, **kw)[0] for p, kw in reqs]
    spans.clear()
    engine = Engine(wide, max_rows=1)  # the long request first, then the short ones in its row
    ids = [engine.submit(*_req(r)) for r in reqs]
    done = drain(engine)
    assert [done[i][0] for i in ids] == alone
    # from the whole window down to 32 for the first prompt, grown as it runs, down again after it
    assert spans == [32, 64, 96, 112, 32]


def test_a_file_with_a_fixed_slots_axis_runs_with_the_whole_window(wide_onnx, wide, tmp_path):
    """Files exported before the cache's slots axis was named hold block_size there: still run."""
    import onnx

    proto = onnx.load(str(wide_onnx))
    for vi in list(proto.graph.input) + list(proto.graph.output):
        if vi.name.startswith(("past_key_values.", "present.")):
            vi.type.tensor_type.shape.dim[1].dim_value = wide.block_size
    onnx.save(proto, tmp_path / "fixed.onnx")
    fixed = OnnxModel(tmp_path / "fixed.onnx", device="cpu")
    assert fixed.slots_fixed and not wide.slots_fixed
    kw = dict(seed=5, max_tokens=150, temperature=1.0)
    assert gen(Engine(fixed), **kw) == gen(Engine(wide), **kw)


def test_a_step_of_several_rows_runs_as_parts_and_each_row_stays_its_single_run(wide):
    assert len(wide.step_sessions(1)) == len(wide.step_sessions(3)) == 1
    assert len(wide.step_sessions(6)) == 2 and wide.step_sessions(6)[0] is wide.session
    reqs = [(p, dict(seed=s, max_tokens=60 + 9 * s)) for s, p in enumerate(["A", "BE", "ROMEO:", "O", "JULIET:", "K"])]
    alone = [run(Engine(wide), p, **kw)[0] for p, kw in reqs]
    engine = Engine(wide, max_rows=6)
    ids = [engine.submit(*_req(r)) for r in reqs]
    done = drain(engine)
    assert [done[i][0] for i in ids] == alone
    assert engine._cache.workers is not None  # the later part ran on the worker thread


def test_a_ctrl_c_while_a_split_step_waits_still_waits_for_every_part():
    """The parts of a step share the guard's RunOptions: a Ctrl-C terminates them all, and the step
    returns (raising KeyboardInterrupt) only after the last part has stopped writing the cache."""
    import threading
    from concurrent.futures import Future

    from sgpt_cli.infer.engine import _wait_all

    part = Future()
    finished = []

    def finish_later():
        threading.Event().wait(0.2)
        finished.append(True)
        part.set_result(None)

    threading.Thread(target=finish_later).start()
    calls = {"n": 0}
    real = part.exception

    def interrupted_once(timeout=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the Ctrl-C lands while the main thread waits
        return real(timeout)

    part.exception = interrupted_once
    with pytest.raises(KeyboardInterrupt):
        _wait_all([part])
    assert finished == [True] and calls["n"] == 2
