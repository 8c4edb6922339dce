"""`sgpt train`: the model's KV cache, the loop (loss falls, seeds repeat, time budget, NaN stop),
checkpoints (safe loading, exact resume), Ctrl-C in a real process, the outputs beside the
checkpoint, the help, and every user error as one line on stderr with nothing left behind."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST, FAST_FLAGS, SGPT, run_env
from sgpt_cli.train import checkpoint, trainer
from sgpt_cli.train.resume import load_resume_state
from sgpt_cli.term.app import app
from sgpt_cli.config import build_train_config
from sgpt_cli.data import read_text
from sgpt_cli.errors import SgptError
from sgpt_cli.train.model import GPT
from sgpt_cli.infer.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = build_train_config("tiny", overrides).model_config(vocab_size=11)
    return GPT(cfg).eval()


# --- the model's cache ---

def decode_step_by_step(model: GPT, idx: torch.Tensor, positions: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of every position, computed as the runtime does: a prefill, then one token at a time."""
    past = model.empty_cache(idx.shape[0])
    logits, past = model(idx[:, :prefill], past, positions[:, :prefill])
    outs = [logits]
    for t in range(prefill, idx.shape[1]):
        logits, past = model(idx[:, t:t + 1], past, positions[:, t:t + 1])
        outs.append(logits)
    assert past[0][0].shape == (idx.shape[0], model.cfg.n_head, idx.shape[1], model.cfg.head_dim)
    return torch.cat(outs, dim=1)


@torch.no_grad()
def test_kv_cache_decoding_equals_the_full_pass():
    model = tiny_model()
    idx = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(20).expand(2, 20)
    full, no_cache = model(idx)
    assert no_cache is None  # no cache in, none out: the training path
    torch.testing.assert_close(decode_step_by_step(model, idx, positions, prefill=5), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_kv_cache_decoding_with_positions_beyond_the_block_size():
    # a rolling window keeps absolute positions that outgrow block_size (32 in the tiny preset)
    model = tiny_model()
    idx = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(2))
    far = (torch.arange(20) + 1000).expand(2, 20)
    full_far, _ = model(idx, position_ids=far)
    torch.testing.assert_close(decode_step_by_step(model, idx, far, prefill=1), full_far, atol=1e-5, rtol=1e-5)
    # rotary positions are relative: shifting every position changes nothing but rounding
    full_near, _ = model(idx)
    torch.testing.assert_close(full_far, full_near, atol=2e-3, rtol=2e-3)


# --- the loop ---

def run_trainer(text_file: Path, out: Path, *, resume=None, should_stop=lambda: False, callback=None, **overrides):
    cfg = build_train_config("tiny", {**FAST, **overrides})
    text, sha = read_text(text_file)
    return trainer.train(cfg, text, sha, out, device="cpu", resume=resume, should_stop=should_stop,
                         callback=callback or (lambda e: None))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, text_file):
    """One ordinary `sgpt train --preset tiny` run of 60 iterations, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("run") / "model.pt"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", str(text_file), "--out", str(out),
                                      "--max-iters", "60", "--batch-size", "12", "--device", "cpu"])
    torch.set_num_threads(before)
    return result, out


def test_loss_falls_well_below_chance_in_60_iterations(cli_run):
    result, out = cli_run
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in checkpoint.metrics_path(out).read_text().splitlines()]
    assert [r["iter"] for r in rows] == [30, 60]
    best = torch.load(out, weights_only=True)
    assert best["val_loss_estimate"] == min(r["val_loss"] for r in rows)  # --out holds the best evaluation
    assert best["val_loss_kind"] == "whole split" and best["val_loss"] != best["val_loss_estimate"]
    vocab = len(checkpoint.vocab_from(torch.load(out, weights_only=True)))
    assert rows[-1]["val_loss"] < math.log(vocab) - 0.7  # chance is ln(vocab) nats per character
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_run_writes_metrics_curve_and_summary_beside_the_checkpoint(cli_run):
    result, out = cli_run
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "model.last.pt", "model.loss.png", "model.metrics.jsonl", "model.pt"]
    assert checkpoint.curve_path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = result.stdout
    assert stdout.count("saved best") >= 1 and "iter     30" in stdout and "iter     60" in stdout
    assert "val loss" in stdout and str(checkpoint.curve_path(out)) in stdout  # the compact terminal view
    assert "done: 60 iterations" in stdout and f"next: sgpt export {out}" in stdout
    assert re.match(r"training preset tiny \((adamw), (float32|bfloat16)\): ", stdout)  # the header says both
    assert result.stderr == ""


def test_flags_override_the_preset_and_are_saved(cli_run):
    _, out = cli_run
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["train_config"]["batch_size"] == 12  # the flag
    assert ckpt["train_config"]["n_embd"] == 32 and ckpt["train_config"]["preset"] == "tiny"  # the preset


def test_checkpoint_loads_with_weights_only_and_holds_the_training_state(cli_run, text_file):
    _, out = cli_run
    best = torch.load(out, map_location="cpu", weights_only=True)
    assert not {"optimizer", "rng", "rng_ranks"} & set(best)  # the best checkpoint: weights only, small
    assert best["data_path"] == str(text_file.resolve()) and best["iter"] == 60
    ckpt = torch.load(checkpoint.last_path(out), map_location="cpu", weights_only=True)
    text, sha = read_text(text_file)
    assert ckpt["format"] == "sgpt-checkpoint" and ckpt["iter"] == 60 and ckpt["data_sha256"] == sha
    assert isinstance(ckpt["vocab"], str) and json.loads(ckpt["vocab"]) == sorted(set(text))
    assert {"model", "model_config", "train_config", "optimizer", "rng_ranks", "best_val_loss"} <= set(ckpt)
    assert ckpt["optimizer"]["chained"][0]["state"]  # Adam's moments, for an exact resume
    model = GPT(build_train_config("tiny", {}).model_config(len(json.loads(ckpt["vocab"]))))
    model.load_state_dict(ckpt["model"])


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": "sgpt-checkpoint", "version": 1, "x": Payload()}, path)
    with pytest.raises(SgptError, match="refused to load"):
        checkpoint.load(path)
    assert not (tmp_path / "pwned").exists()


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    checkpoint.save(path, {"model": {}, "model_config": {}, "vocab": "[]", "iter": 1})
    before = path.read_bytes()

    def torn_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"model": {}, "model_config": {}, "vocab": "[]", "iter": 2})
    assert path.read_bytes() == before and files_in(tmp_path) == ["m.pt"]


def test_seed_reproducibility(tmp_path, text_file):
    a = run_trainer(text_file, tmp_path / "a.pt", max_iters=6, eval_interval=6)
    b = run_trainer(text_file, tmp_path / "b.pt", max_iters=6, eval_interval=6)
    c = run_trainer(text_file, tmp_path / "c.pt", max_iters=6, eval_interval=6, seed=7)
    assert a.best_val_loss == b.best_val_loss != c.best_val_loss
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a.out, b.out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, text_file):
    # dropout makes torch's own random stream matter too, not only the batch sampler's
    settings = dict(max_iters=24, eval_interval=10, dropout=0.1)
    whole = run_trainer(text_file, tmp_path / "whole.pt", **settings)

    stop = {"now": False}
    def stop_at_13(e):  # not an evaluation step: the extra evaluation must not disturb anything
        stop["now"] = stop["now"] or (e.kind == "step" and e.iter >= 13)

    first = run_trainer(text_file, tmp_path / "split.pt", callback=stop_at_13, should_stop=lambda: stop["now"],
                        **settings)
    assert (first.status, first.iters, first.saved_iter) == ("interrupted", 13, 13)
    text, sha = read_text(text_file)
    ckpt, cfg = load_resume_state(tmp_path / "split.pt", sha, CharTokenizer.from_text(text), {})
    assert ckpt["iter"] == 13 and cfg.max_iters == 24
    second = trainer.train(cfg, text, sha, tmp_path / "split.pt", device="cpu", resume=ckpt)

    assert (second.status, second.iters) == ("done", 24)
    a = torch.load(whole.last, weights_only=True)
    b = torch.load(second.last, weights_only=True)
    assert a["val_loss"] == b["val_loss"] and a["best_val_loss"] == b["best_val_loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = lambda p: [json.loads(r) for r in checkpoint.metrics_path(p).read_text().splitlines()]  # noqa: E731
    # a stop request saves without an estimate (it is answered within seconds): no row for 13
    assert [r["iter"] for r in rows(tmp_path / "split.pt")] == [10, 20, 24]
    assert rows(tmp_path / "split.pt")[1]["val_loss"] == rows(tmp_path / "whole.pt")[1]["val_loss"]


def test_resume_to_a_larger_max_iters_matches_a_longer_run_when_the_rate_is_flat(tmp_path, text_file):
    # `--max-iters N` then `--resume --max-iters 2N` differs from one 2N run only by the schedule
    # (the first run's cosine ends at N); with a flat rate the two must agree exactly
    flat = dict(learning_rate=1e-3, min_lr=1e-3, warmup_iters=0, eval_interval=8)
    whole = run_trainer(text_file, tmp_path / "whole.pt", max_iters=16, **flat)
    run_trainer(text_file, tmp_path / "half.pt", max_iters=8, **flat)
    text, sha = read_text(text_file)
    ckpt, cfg = load_resume_state(tmp_path / "half.pt", sha, CharTokenizer.from_text(text), {"max_iters": 16})
    resumed = trainer.train(cfg, text, sha, tmp_path / "half.pt", device="cpu", resume=ckpt)
    a, b = (torch.load(r.last, weights_only=True) for r in (whole, resumed))
    assert a["iter"] == b["iter"] == 16 and a["val_loss"] == b["val_loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_time_budget_stops_the_run_and_the_schedule_fits_it(tmp_path, text_file):
    result = run_trainer(text_file, tmp_path / "t.pt", max_iters=10**6, time_budget=0.5, eval_interval=10**5)
    assert result.status == "time" and 0 < result.iters < 10**6
    assert torch.load(result.last, weights_only=True)["iter"] == result.iters  # evaluated and saved at the stop
    cfg = build_train_config("tiny", {"max_iters": 10**6, "time_budget": 100.0, "warmup_iters": 0})
    # the cosine decay follows the clock: half the budget, half-way down; all of it, the floor
    lr = lambda seconds: trainer.lr_at(cfg, 10, trainer.schedule_progress(cfg, 10, seconds))  # noqa: E731
    assert lr(50.0) == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2, rel=1e-3)
    assert lr(100.0) == pytest.approx(cfg.min_lr)


def test_trapezoid_schedule_is_flat_then_falls_linearly_to_the_floor_over_the_cooldown():
    cfg = build_train_config("tiny", {"max_iters": 10**6, "time_budget": 100.0, "warmup_iters": 0,
                                      "lr_schedule": "trapezoid", "cooldown": 0.25})
    lr = lambda seconds: trainer.lr_at(cfg, 10, trainer.schedule_progress(cfg, 10, seconds))  # noqa: E731
    assert lr(0.0) == lr(50.0) == lr(75.0) == cfg.learning_rate  # flat until the last quarter
    assert lr(87.5) == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2)
    assert lr(100.0) == pytest.approx(cfg.min_lr) and lr(150.0) == pytest.approx(cfg.min_lr)


def test_a_checkpoint_from_before_the_schedule_setting_resumes_with_the_cosine_it_had():
    from sgpt_cli.config import train_config_from_dict

    saved = dataclasses.asdict(build_train_config("cpu", {}))
    assert saved.pop("lr_schedule") == "trapezoid"  # today's default
    assert train_config_from_dict(saved).lr_schedule == "cosine"
    assert train_config_from_dict({**saved, "lr_schedule": "trapezoid"}).lr_schedule == "trapezoid"


# what checkpoints written before these settings existed lack (train_config, model_config)
NEWER_SETTINGS = ("lr_schedule", "cooldown", "muon_ns_steps", "mlp", "tied_head", "qk_norm", "logit_cap")


def test_a_checkpoint_from_before_the_newer_settings_resumes_as_the_model_it_was(tmp_path, text_file):
    """Every setting added since checkpoints were first written, stripped from a saved run: it resumes
    (no "model shape does not match"), with the schedule and network it was trained with."""
    from sgpt_cli.config import FORMER_DEFAULTS

    first = run_trainer(text_file, tmp_path / "old.pt", max_iters=4, eval_interval=2)  # tiny: cosine, no QK-norm
    state = torch.load(first.last, weights_only=True)
    for part in ("train_config", "model_config"):
        state[part] = {k: v for k, v in state[part].items() if k not in NEWER_SETTINGS}
    checkpoint.save(first.last, state)
    text, sha = read_text(text_file)
    ckpt, cfg = load_resume_state(tmp_path / "old.pt", sha, CharTokenizer.from_text(text), {"max_iters": 6})
    assert (cfg.lr_schedule, cfg.qk_norm, cfg.mlp, cfg.tied_head, cfg.logit_cap) == ("cosine", False, "gelu", True, 0.0)
    assert set(FORMER_DEFAULTS) <= set(NEWER_SETTINGS)
    resumed = trainer.train(cfg, text, sha, tmp_path / "old.pt", device="cpu", resume=ckpt)
    assert (resumed.status, resumed.iters) == ("done", 6)


class _CompileFails(torch.nn.Module):
    """What torch.compile returns on a machine where compiling fails: it raises at the first call."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module

    def forward(self, x):
        raise RuntimeError("InductorError: C++ compiler not found\nwith a second line")


def test_a_compile_that_fails_gives_one_warning_and_the_run_trains_on_without_it(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(torch, "compile", _CompileFails)
    events = []
    result = run_trainer(text_file, tmp_path / "c.pt", max_iters=6, eval_interval=3, compile=True, callback=events.append)
    plain = run_trainer(text_file, tmp_path / "p.pt", max_iters=6, eval_interval=3, compile=False)
    assert result.status == "done" and result.iters == 6
    warnings = [e.info["message"] for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "torch.compile does not work here" in warnings[0] and "C++ compiler" in warnings[0]
    assert "\n" not in warnings[0] and "--no-compile" in warnings[0]
    assert result.best_val_loss == plain.best_val_loss  # the same training as without --compile


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, text_file):
    result = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(tmp_path / "m.pt"), "--lr", "1e6")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the loss became nan" in lines[0] and "--learning-rate" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.pt").exists() and not checkpoint.last_path(tmp_path / "m.pt").exists()


# --- Ctrl-C in a real process ---

def start_endless_run(tmp_path: Path, text_file: Path, out: Path) -> subprocess.Popen:
    """`sgpt train` in a real process, returned once its first evaluation is saved and printed."""
    cmd = [*SGPT, "train", *FAST_FLAGS, "--max-iters", "100000", "--data", str(text_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=run_env(OMP_NUM_THREADS=1, PYTHONUNBUFFERED=1), cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("iter "):
            return proc
    proc.kill()
    raise AssertionError(f"the run ended before its first evaluation: {proc.stderr.read()}")


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path, text_file):
    out = tmp_path / "m.pt"
    proc = start_endless_run(tmp_path, text_file, out)
    try:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    saved = torch.load(checkpoint.last_path(out), weights_only=True)["iter"]
    assert saved >= 30
    assert f"iteration {saved} is saved" in stderr
    assert f"Resume with: sgpt train --resume --out {out} --data {text_file}" in stderr

    resumed = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--resume",
                     "--max-iters", str(saved + 5))
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from iteration {saved}" in resumed.stdout
    assert torch.load(checkpoint.last_path(out), weights_only=True)["iter"] == saved + 5


def test_a_closed_pipe_ends_the_run_quietly_keeping_the_last_checkpoint(tmp_path, text_file):
    out = tmp_path / "m.pt"
    proc = start_endless_run(tmp_path, text_file, out)
    try:
        proc.stdout.close()  # `sgpt train | head`: the reader goes away; the next evaluation's line fails
        stderr = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and stderr == ""
    assert torch.load(checkpoint.last_path(out), weights_only=True)["iter"] >= 30


# --- user errors: one line on stderr, a non-zero status, no traceback, nothing written ---

def write_files(tmp: Path, text_file: Path, ckpt: Path) -> dict:
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "latin1.txt").write_bytes("Méditations à la façon de Montaigne\n".encode("latin-1") * 10)
    (tmp / "short.txt").write_text("To be, or not to be.\n" * 5)  # validation: 10 characters < 34
    (tmp / "folder").mkdir()
    (tmp / "somefile.txt").write_text("a file, not a folder")
    (tmp / "other.txt").write_text("entirely different words: zebra quartz " * 200)
    (tmp / "same-chars.txt").write_text(text_file.read_text()[::-1])  # same vocabulary, another text
    (tmp / "trained.pt").write_bytes(ckpt.read_bytes())
    (tmp / "trained.last.pt").write_bytes(checkpoint.last_path(ckpt).read_bytes())  # what --resume reads
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint at all")
    return {"text": str(text_file)}


BAD_RUNS = {
    "missing data": (["--data", "nope.txt"], "does not exist"),
    "empty data": (["--data", "empty.txt"], "is empty"),
    "non-utf8 data": (["--data", "latin1.txt"], "not UTF-8"),
    "text too short": (["--data", "short.txt"], "too short for --block-size 32"),
    "folder as data": (["--data", "folder"], "is a folder"),
    "n_embd % n_head": (["--data", "{text}", "--n-embd", "30", "--n-head", "4"], "divisible by --n-head"),
    "n_head % n_kv_head": (["--data", "{text}", "--n-head", "4", "--n-kv-head", "3"], "--n-kv-head (3) must divide --n-head (4)"),
    "negative n_kv_head": (["--data", "{text}", "--n-kv-head", "-1"], "--n-kv-head (-1) must divide"),
    "block size 0": (["--data", "{text}", "--block-size", "0"], "--block-size must be from 1 to 65536 (got 0)"),
    "negative lr": (["--data", "{text}", "--lr", "-0.001"], "--learning-rate must be positive"),
    "unknown schedule": (["--data", "{text}", "--lr-schedule", "linear"], "--lr-schedule must be cosine or trapezoid"),
    "cooldown 0": (["--data", "{text}", "--cooldown", "0"], "--cooldown must be in (0, 1] (got 0.0)"),
    "cooldown above 1": (["--data", "{text}", "--cooldown", "1.5"], "--cooldown must be in (0, 1]"),
    "no Newton-Schulz step": (["--data", "{text}", "--muon-ns-steps", "0"], "--muon-ns-steps must be from 1 to 20"),
    "unknown activation": (["--data", "{text}", "--mlp", "swish"], "--mlp must be gelu or relu2 (got 'swish')"),
    "negative logit cap": (["--data", "{text}", "--logit-cap", "-1"], "--logit-cap must not be negative"),
    "unknown precision": (["--data", "{text}", "--precision", "half"],
                          "--precision must be auto, float32, bfloat16 (got 'half')"),
    "unknown preset": (["--data", "{text}", "--preset", "huge"], "unknown --preset 'huge'"),
    "bad device": (["--data", "{text}", "--device", "tpu"], "--device must be auto, cpu or cuda"),
    "resume nothing": (["--data", "{text}", "--resume"], "nothing to resume"),
    "resume other vocab": (["--data", "other.txt", "--resume", "--out", "trained.pt"], "vocabulary differs"),
    "resume other text": (["--data", "same-chars.txt", "--resume", "--out", "trained.pt"], "SHA-256 differs"),
    "resume non-sgpt": (["--data", "{text}", "--resume", "--out", "garbage.pt"], "not a readable sgpt checkpoint"),
    "resume and force": (["--data", "{text}", "--resume", "--force"], "contradict"),
    "out under a file": (["--data", "{text}", "--out", "somefile.txt/model.pt"], "is a file, not a folder"),
    "out is a folder": (["--data", "{text}", "--out", "folder"], "is a folder"),
    "out exists": (["--data", "{text}", "--out", "trained.pt"], "--resume to continue it or --force"),
    "resume finished": (["--data", "{text}", "--out", "trained.pt", "--resume"], "pass a larger --max-iters"),
}


@pytest.mark.parametrize("name", BAD_RUNS)
def test_bad_input_is_one_line_on_stderr_and_leaves_nothing(name, tmp_path, monkeypatch, text_file, tiny_ckpt):
    monkeypatch.chdir(tmp_path)
    values = write_files(tmp_path, text_file, tiny_ckpt)
    args, needle = BAD_RUNS[name]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = invoke("--preset", "tiny", "--max-iters", "2", "--eval-iters", "1", *[a.format(**values) for a in args])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: "), result.output
    assert needle in lines[0]
    assert result.stdout == ""  # not even a start line: every check runs before any work
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before  # no file created, none touched


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, text_file):
    result = invoke(*FAST_FLAGS, "--device", "cuda", "--data", str(text_file), "--out", str(tmp_path / "m.pt"))
    assert result.exit_code == 1 and "no CUDA GPU" in result.stderr and result.stdout == ""
    assert files_in(tmp_path) == []


def test_errors_go_to_stderr_of_a_real_process(tmp_path):
    proc = subprocess.run([*SGPT, "train", "--data", "missing.txt", "--out", "m.pt"], capture_output=True,
                          text=True, env=run_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "sgpt: error: data file missing.txt does not exist; pass --data PATH to a UTF-8 text file"]
    assert files_in(tmp_path) == []


def test_force_starts_over_and_drops_the_old_runs_files(tmp_path, text_file):
    out = tmp_path / "m.pt"
    first = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--max-iters", "4", "--eval-interval", "2")
    assert first.exit_code == 0, first.output
    again = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--max-iters", "2", "--eval-interval", "2",
                   "--force")
    assert again.exit_code == 0, again.output
    assert torch.load(checkpoint.last_path(out), weights_only=True)["iter"] == 2
    assert [json.loads(r)["iter"] for r in checkpoint.metrics_path(out).read_text().splitlines()] == [2]


# --- the help ---

def test_help_explains_every_option_with_its_default():
    import typer.main

    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    command = typer.main.get_command(app).commands["train"]
    fields = {f.name for f in dataclasses.fields(build_train_config("tiny", {}))} - {"preset"}
    options = {p.name for p in command.params}
    assert fields <= options  # every hyperparameter has its flag
    for param in command.params:
        if param.name == "help":
            continue
        assert param.help, f"--{param.name} has no help"
        assert "[default:" in param.help or (param.show_default and param.default is not None), param.name
        assert param.opts[0] in result.stdout


def test_a_terminal_gets_a_live_status_line(tmp_path, text_file):
    import pexpect

    child = pexpect.spawn(SGPT[0], [*SGPT[1:], "train", *FAST_FLAGS, "--max-iters", "60", "--eval-interval", "30",
                                    "--data", str(text_file), "--out", str(tmp_path / "m.pt")],
                          env=run_env(OMP_NUM_THREADS=1, TERM="xterm"), cwd=str(tmp_path), encoding="utf-8",
                          timeout=120, dimensions=(30, 150))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)  # styles and cursor moves
    # the live line: iteration, loss, val loss, tokens/s, elapsed, ETA
    for needle in ("iter ", "/60", "loss ", "val ", "tok/s", "elapsed ", "eta "):
        assert needle in shown
    assert "done: 60 iterations" in shown and "Traceback" not in shown


def test_a_log_file_gets_periodic_status_lines(tmp_path, text_file, monkeypatch):
    from sgpt_cli.term import train_run as train_view

    monkeypatch.setattr(train_view, "LOG_EVERY_S", 0.0)  # every step, so a short run shows it
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", *FAST_FLAGS, "--max-iters", "10", "--eval-interval", "10",
                                      "--data", str(text_file), "--out", str(tmp_path / "m.pt")])
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    status = [line for line in result.stdout.splitlines() if line.startswith("iter ") and "tok/s" in line]
    assert len(status) >= 5 and "eta " in status[-1]


def test_muon_steps_matrices_of_one_shape_as_a_stack_exactly_as_one_at_a_time():
    """The batched Muon step (one Newton-Schulz stack per shape) gives each matrix the update of the
    per-matrix rule: Nesterov momentum, orthogonalised, decayed, scaled by 0.2 sqrt(max dim); tall and
    wide matrices alike, and the momentum state stays one buffer per parameter (checkpoints resume)."""
    from sgpt_cli.train.optim import Muon, orthogonalise

    torch.manual_seed(0)
    shapes = [(24, 8), (24, 8), (8, 24), (8, 8), (24, 8)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    start = [p.detach().clone() for p in params]
    opt = Muon(params, lr=0.01, weight_decay=0.1, momentum=0.9, ns_steps=5)
    bufs = [torch.zeros(s) for s in shapes]
    for step in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, (g, s) in enumerate(zip(grads, shapes)):
            bufs[i] = bufs[i].lerp(g, 0.1)
            update = orthogonalise(g.lerp(bufs[i], 0.9), 5)  # one matrix alone
            start[i] = start[i] * (1 - 0.01 * 0.1) - 0.01 * 0.2 * max(s) ** 0.5 * update
    for p, expected, buf in zip(params, start, bufs):
        assert torch.allclose(p.detach(), expected, atol=1e-5)
        assert torch.allclose(opt.state[p]["momentum_buffer"], buf, atol=1e-6)
    one = orthogonalise(torch.randn(24, 8), 5)
    singular = torch.linalg.svdvals(one)
    assert singular.min() > 0.5 and singular.max() < 1.5  # roughly semi-orthogonal, as Newton-Schulz promises
