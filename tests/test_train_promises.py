"""`sgpt train`'s promises: a stop request (Ctrl-C, SIGTERM) abandons an estimate or a step in
progress and keeps the last whole step; a checkpoint being written is finished whatever comes; a
time budget bounds the whole run and a resumed run gets more; one val loss (the whole split) from
training to export, eval, the chat banner and /show; fine-tuning with --init-from; a weights-only
checkpoint; the lock on --out; a full disk, odd numbers and an ASCII terminal as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
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
from sgpt_cli.term.train_run import StopRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(text_file: Path, out: Path, *, stop=None, callback=None, resume=None, init=None, **overrides):
    cfg = build_train_config("tiny", {**FAST, **overrides})
    text, sha = read_text(text_file)
    return trainer.train(cfg, text, sha, out, device="cpu", resume=resume, init=init, data_path=str(text_file),
                         should_stop=stop or (lambda: False), callback=callback or (lambda e: None))


def signal_when(stop: StopRequest, armed: dict, mode: str):
    """A Batches.sample that delivers SIGTERM (through the real handler) at the first draw made in
    `mode` once armed: inside an estimate or a step, exactly where a signal can land."""
    real = trainer.Batches.sample

    def sample(self, gen):
        if armed["on"] and stop.mode == mode and armed.get("where", lambda s: True)(self):
            armed["on"] = False
            stop.handle(signal.SIGTERM, None)  # raises KeyboardInterrupt inside an abortable region
        return real(self, gen)

    return sample


# --- a stop request: within seconds, the last whole step kept ---

def test_a_stop_during_an_estimate_abandons_it_and_keeps_the_step(tmp_path, text_file, monkeypatch):
    stop, armed = StopRequest(announce=False), {"on": False}
    monkeypatch.setattr(trainer.Batches, "sample", signal_when(stop, armed, "abortable"))

    def arm_at_10(e):
        armed["on"] = armed["on"] or (e.kind == "step" and e.iter == 10)

    out = tmp_path / "m.pt"
    result = train(text_file, out, stop=stop, callback=arm_at_10, max_iters=100, eval_interval=10)
    assert (result.status, result.iters, result.saved_iter) == ("interrupted", 10, 10)
    assert torch.load(checkpoint.last_path(out), weights_only=True)["iter"] == 10
    assert not checkpoint.metrics_path(out).exists()  # the estimate at 10 was abandoned, not logged
    assert result.val_loss is None


def test_a_stop_during_a_step_keeps_the_step_before_and_resumes_exactly(tmp_path, text_file, monkeypatch):
    settings = dict(max_iters=12, eval_interval=100, dropout=0.1)
    whole = train(text_file, tmp_path / "whole.pt", **settings)

    stop, armed = StopRequest(announce=False), {"on": False}
    monkeypatch.setattr(trainer.Batches, "sample", signal_when(stop, armed, "abortable"))

    def arm_at_7(e):
        armed["on"] = armed["on"] or (e.kind == "step" and e.iter == 7)

    out = tmp_path / "split.pt"
    first = train(text_file, out, stop=stop, callback=arm_at_7, **settings)
    assert (first.status, first.saved_iter) == ("interrupted", 7)  # step 8 was cut short: not saved
    monkeypatch.undo()
    text, sha = read_text(text_file)
    ckpt, cfg = load_resume_state(out, sha, None, {}, text=text)
    second = trainer.train(cfg, text, sha, out, device="cpu", resume=ckpt)
    a, b = (torch.load(r.last, weights_only=True) for r in (whole, second))
    assert a["iter"] == b["iter"] == 12
    # the batch of the abandoned step is drawn again: the resumed run is the uninterrupted one
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_signals_while_a_checkpoint_is_written_wait_for_it(tmp_path, text_file, monkeypatch):
    stop = StopRequest(announce=False)
    real_save = checkpoint.save

    def save_under_fire(path, payload):
        stop.handle(signal.SIGINT, None)  # Ctrl-C, and again: neither may cut the pair of files
        stop.handle(signal.SIGINT, None)
        real_save(path, payload)

    monkeypatch.setattr(checkpoint, "save", save_under_fire)
    out = tmp_path / "m.pt"
    result = train(text_file, out, stop=stop, max_iters=100, eval_interval=5)
    assert result.status == "interrupted" and result.saved_iter in (5, 6)  # at the next step boundary
    best, last = torch.load(out, weights_only=True), torch.load(checkpoint.last_path(out), weights_only=True)
    # both files were written whole, and they agree on which checkpoint is the best
    assert best["iter"] == 5 and last["iter"] == result.saved_iter
    assert best["val_loss_estimate"] == last["best_val_loss"]


def start_run(tmp_path: Path, text_file: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [*SGPT, "train", *FAST_FLAGS, "--max-iters", "1000000", "--data", str(text_file), "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=run_env(OMP_NUM_THREADS=1, PYTHONUNBUFFERED=1), cwd=tmp_path)


def test_one_sigterm_ends_a_real_run_in_a_long_estimate(tmp_path, text_file):
    # the first estimate (iteration 5) would take many minutes: one SIGTERM must end it
    out = tmp_path / "m.pt"
    proc = start_run(tmp_path, text_file, out, "--eval-interval", "5", "--eval-iters", "10000000")
    try:
        assert proc.stdout.readline().startswith("training")  # set up; the steps take milliseconds
        deadline = time.monotonic() + 60
        while not checkpoint.lock_path(out).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # well inside the estimate by now, or (on a slow machine) inside a step
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)  # one signal is enough: no second one is sent
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr + stdout, stderr
    saved = torch.load(checkpoint.last_path(out), weights_only=True)["iter"]
    assert 1 <= saved <= 5 and f"iteration {saved} is saved" in stderr
    assert not checkpoint.metrics_path(out).exists()  # no estimate completed
    assert not checkpoint.lock_path(out).exists()


# --- budgets ---

class FakeClock:
    """Deterministic time for the trainer: drawing a batch costs 30 ms (so a step does, and an
    estimate costs that per batch), a save 50 ms, and the whole-split measurement what the run
    predicts for it; reading the clock costs nothing."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr(trainer.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(trainer.Batches, "sample", self.costing(trainer.Batches.sample, 0.03))
        monkeypatch.setattr(checkpoint, "save", self.costing(checkpoint.save, 0.05))
        real_whole = trainer.whole_split_loss
        self.prediction = 0.0

        def whole(model, ids, deadline=None, batch=32):
            self.now += self.prediction
            return real_whole(model, ids, deadline, batch)

        monkeypatch.setattr(trainer, "whole_split_loss", whole)
        real_predict = trainer.Run.whole_split_seconds

        def predict(run):
            self.prediction = real_predict(run)
            return self.prediction

        monkeypatch.setattr(trainer.Run, "whole_split_seconds", predict)

    def costing(self, fn, cost):
        def timed(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.now += cost
            return result
        return timed


def test_the_time_budget_bounds_the_whole_run_with_the_final_measurement(tmp_path, text_file, monkeypatch):
    FakeClock(monkeypatch)
    out = tmp_path / "m.pt"
    result = train(text_file, out, max_iters=10**6, time_budget=20.0, eval_interval=50)
    assert result.status == "time" and result.val_loss is not None
    assert result.elapsed <= 20.0  # the estimate, the whole split and the checkpoint fit inside
    best = torch.load(out, weights_only=True)
    assert best["val_loss"] == result.val_loss and best["val_loss_kind"] == "whole split"


def test_a_final_measurement_that_cannot_fit_is_skipped_and_said(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(trainer.Run, "whole_split_seconds", lambda self: 10**6)  # a huge split
    result = train(text_file, tmp_path / "m.pt", max_iters=10**6, time_budget=1.0, eval_interval=10**5)
    assert result.status == "time" and result.val_loss is None and "needs ~" in result.val_note
    assert torch.load(tmp_path / "m.pt", weights_only=True)["val_loss_kind"] == "estimate"


def test_resuming_a_run_that_spent_its_budget_gives_it_more(tmp_path, text_file):
    out = tmp_path / "m.pt"
    first = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--max-iters", "1000000",
                   "--time-budget", "1")
    assert first.exit_code == 0, first.output
    last = checkpoint.load(checkpoint.last_path(out))
    checkpoint.save(checkpoint.last_path(out), {**last, "train_seconds": 1.0})  # as if it ran to the end
    spent = 1.0
    text, sha = read_text(text_file)
    _, again = load_resume_state(out, sha, None, {}, text=text)
    assert again.time_budget == pytest.approx(spent + 1)  # the same stretch again
    _, more = load_resume_state(out, sha, None, {"time_budget": 5.0}, text=text)
    assert more.time_budget == pytest.approx(spent + 5)  # "this much more"
    resumed = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(checkpoint.last_path(out), weights_only=True)["iter"] > first_iter(first)


def first_iter(result) -> int:
    return int(result.stdout.split("time budget spent: ")[1].split(" iterations")[0])


def test_a_gpu_preset_on_a_cpu_says_so_after_its_first_step(tmp_path, text_file):
    events = []
    cfg = build_train_config("gpu", {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 2,
                                     "max_iters": 3, "eval_iters": 1, "sample_chars": 0, "dropout": 0.0})
    text, sha = read_text(text_file)
    trainer.train(cfg, text, sha, tmp_path / "m.pt", device="cpu", callback=events.append)
    warnings = [e for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "s per step" in warnings[0].info["message"]
    assert "--preset cpu" in warnings[0].info["message"]
    assert [e.kind for e in events][:3] == ["start", "warning", "step"]  # up front: at the first step


# --- one val loss ---

def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def test_train_export_eval_chat_and_show_agree_on_one_val_loss(tmp_path, text_file, monkeypatch):
    from sgpt_cli.infer.chat_session import ChatSession
    from sgpt_cli.infer.onnx_model import OnnxModel, model_summary

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m.pt"
    trained = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--max-iters", "30")
    assert trained.exit_code == 0, trained.output
    recorded = torch.load(out, weights_only=True)["val_loss"]
    assert f"val loss {recorded:.4f} (whole validation split)" in trained.stdout
    assert "estimates: train" in trained.stdout  # the periodic figures say what they are

    onnx = tmp_path / "m.onnx"
    exported = CliRunner().invoke(app, ["export", str(out), "--out", str(onnx)])  # finds its text by itself
    assert exported.exit_code == 0, exported.output
    line = next(r for r in exported.stdout.splitlines() if r.startswith("val loss"))
    figure = line.split()[2]
    assert f"whole validation split of {text_file.resolve()}" in line

    evaluated = CliRunner().invoke(app, ["eval", "--model", str(onnx), "--data", str(text_file), "--split", "val",
                                         "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    loss = json.loads(evaluated.stdout)["loss"]
    summary = model_summary(OnnxModel(onnx, device="cpu"))
    show = dict(ChatSession().show_rows(summary))["val loss"]
    chat = subprocess.run([*SGPT, "chat", "--model", str(onnx), "--no-history"], input="/quit\n", text=True,
                          capture_output=True, env=run_env(), cwd=tmp_path, timeout=120)
    banner = chat.stderr + chat.stdout
    assert figure == f"{loss:.4f}" == show == f"{summary['val_loss']:.4f}"
    assert f"val loss {figure}" in banner
    assert abs(loss - recorded) < 1e-4  # training's own measurement (PyTorch) is the same figure


# --- fine-tuning and weights-only checkpoints ---

def test_init_from_extends_the_vocabulary_and_keeps_the_old_rows(tmp_path, text_file, tiny_ckpt):
    new_text = tmp_path / "new.txt"
    new_text.write_text(text_file.read_text() + "\nÉlan ß ¿qué?\n" * 50, encoding="utf-8")
    parent = checkpoint.load(tiny_ckpt)
    old_vocab = checkpoint.vocab_from(parent)
    out = tmp_path / "ft.pt"
    result = invoke(*FAST_FLAGS, "--data", str(new_text), "--out", str(out), "--init-from", str(tiny_ckpt),
                    "--max-iters", "4", "--eval-interval", "4", "--lr", "1e-4", "--min-lr", "1e-5")
    assert result.exit_code == 0, result.output
    assert f"starting from {tiny_ckpt}" in result.stdout
    child = torch.load(out, weights_only=True)
    vocab = checkpoint.vocab_from(child)
    assert vocab[:len(old_vocab)] == old_vocab and {"É", "ß", "¿", "é"} <= set(vocab[len(old_vocab):])
    assert child["init_from"] == str(tiny_ckpt) and child["iter"] == 4  # a fresh schedule: counted from 0
    assert child["model_config"]["n_embd"] == parent["model_config"]["n_embd"]
    # the parent's rows moved only by 4 small steps
    old_rows = parent["model"]["wte.weight"]
    assert (child["model"]["wte.weight"][:len(old_vocab)] - old_rows).abs().max() < 0.05
    # and the fine-tuned run resumes like any other
    again = invoke(*FAST_FLAGS, "--data", str(new_text), "--out", str(out), "--resume", "--max-iters", "6")
    assert again.exit_code == 0, again.output


def test_init_from_an_untied_head_extends_the_head_too_and_keeps_the_options(tmp_path, text_file):
    """A model with its own head (and the other options): fine-tuning on new characters gives the head
    rows for them (zero: unlikely until trained, moved only by the few steps), keeps the parent's rows
    and keeps every option, which it refuses to change."""
    parent_path = tmp_path / "parent.pt"
    options = ["--no-tied-head", "--qk-norm", "--mlp", "relu2", "--logit-cap", "20"]
    trained = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(parent_path), "--max-iters", "6", *options)
    assert trained.exit_code == 0, trained.output
    new_text = tmp_path / "new.txt"
    new_text.write_text(text_file.read_text() + "\nÉlan ß\n" * 50, encoding="utf-8")
    out = tmp_path / "ft.pt"
    result = invoke(*FAST_FLAGS, "--data", str(new_text), "--out", str(out), "--init-from", str(parent_path),
                    "--max-iters", "2", "--lr", "1e-5", "--min-lr", "1e-6")
    assert result.exit_code == 0, result.output
    parent, child = torch.load(parent_path, weights_only=True), torch.load(out, weights_only=True)
    old = len(checkpoint.vocab_from(parent))
    for name in ("wte.weight", "lm_head.weight"):
        assert (child["model"][name][:old] - parent["model"][name][:old]).abs().max() < 0.01
    assert child["model"]["lm_head.weight"][old:].abs().max() < 0.01  # new characters' rows started at zero
    assert not torch.equal(child["model"]["lm_head.weight"], child["model"]["wte.weight"])
    shape = child["model_config"]
    assert (shape["tied_head"], shape["qk_norm"], shape["mlp"], shape["logit_cap"]) == (False, True, "relu2", 20.0)
    refused = invoke(*FAST_FLAGS, "--data", str(new_text), "--out", str(tmp_path / "x.pt"), "--init-from",
                     str(parent_path), "--tied-head")
    assert refused.exit_code == 2 and "keeps the shape it starts from" in refused.stderr


def test_init_from_refuses_another_shape(tmp_path, text_file, tiny_ckpt):
    result = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(tmp_path / "ft.pt"), "--init-from",
                    str(tiny_ckpt), "--n-embd", "64")
    assert result.exit_code == 2 and "keeps the shape it starts from" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_strip_training_state_makes_a_small_weights_only_checkpoint(tmp_path, tiny_ckpt):
    from sgpt_cli.train.onnx_export import load_model

    full = checkpoint.last_path(tiny_ckpt)
    small = checkpoint.strip_training_state(full, tmp_path / "w.pt")
    ckpt = torch.load(small, weights_only=True)
    assert "optimizer" not in ckpt and "rng_ranks" not in ckpt and ckpt["vocab"]
    assert small.stat().st_size < full.stat().st_size / 2
    load_model(small)  # export takes it


# --- export finds the text it needs ---

def test_export_int8_finds_the_recorded_text_or_asks_for_data(tmp_path, text_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "mine.txt"
    copy.write_bytes(text_file.read_bytes())
    out = tmp_path / "m.pt"
    assert invoke(*FAST_FLAGS, "--data", str(copy), "--out", str(out), "--max-iters", "10").exit_code == 0
    copy.write_text("changed since", encoding="utf-8")  # the recorded path no longer holds that text
    result = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp_path / "m.onnx"), "--quantize", "int8"])
    assert result.exit_code == 1 and not (tmp_path / "m.onnx").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"(recorded: {copy.resolve()})" in lines[0] and "pass --data PATH" in lines[0]


# --- the lock, a full disk, odd numbers, an ASCII terminal ---

def test_a_second_training_on_the_same_out_names_the_first(tmp_path, text_file):
    out = tmp_path / "m.pt"
    with checkpoint.training_lock(out):
        result = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--max-iters", "2")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is being trained by another run (pid {os.getpid()}" in lines[0]
    assert not out.exists() and not checkpoint.lock_path(out).exists()  # released and removed


@pytest.mark.parametrize("failure", ["ENOSPC", "torch writer"])
def test_a_full_disk_while_training_is_one_line(tmp_path, text_file, monkeypatch, failure):
    real = checkpoint.torch.save
    calls = {"n": 0}

    def full_disk(obj, f):
        calls["n"] += 1
        if calls["n"] <= 2:
            return real(obj, f)  # the first evaluation's pair is written
        if failure == "ENOSPC":
            raise OSError(28, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = tmp_path / "m.pt"
    result = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(out), "--max-iters", "20",
                    "--eval-interval", "5")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: cannot write"), result.stderr
    assert "iteration 5 is still safe" in lines[0]
    monkeypatch.undo()
    assert torch.load(checkpoint.last_path(out), weights_only=True)["iter"] == 5  # intact


@pytest.mark.parametrize("args, needle", [
    (["--seed", "99999999999999999999999"], "--seed must be between 0 and 2**63 - 1"),
    (["--seed", str(2**64 - 1)], "--seed must be between 0 and 2**63 - 1"),
    (["--min-lr", "inf"], "--min-lr must be a number (got inf)"),
    (["--time-budget", "nan"], "--time-budget must be a number (got nan)"),
])
def test_numbers_out_of_range_are_one_line_and_leave_nothing(tmp_path, text_file, args, needle):
    result = invoke(*FAST_FLAGS, "--data", str(text_file), "--out", str(tmp_path / "run" / "m.pt"), *args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # not even the folder


def test_an_ascii_terminal_gets_ascii_curves(tmp_path, text_file):
    proc = subprocess.run([*SGPT, "train", *FAST_FLAGS, "--data", str(text_file), "--out", str(tmp_path / "m.pt"),
                           "--max-iters", "20", "--eval-interval", "5"], capture_output=True, timeout=300,
                          env=run_env(OMP_NUM_THREADS=1, PYTHONIOENCODING="ascii"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr and b"val loss estimates" in proc.stdout
    proc.stdout.decode("ascii")  # nothing but ASCII reached the terminal


def test_the_config_refuses_non_finite_numbers_from_python_too():
    from sgpt_cli.errors import UsageError

    with pytest.raises(UsageError, match="--min-lr must be a finite number"):
        build_train_config("tiny", {"min_lr": float("inf")})
