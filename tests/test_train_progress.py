"""`sgpt train` shows its progress on any machine: estimates scheduled from the budget and the
measured pace (a curve on a slow machine, their cost within their share), the last estimate sized
to the time left, a piped run's line per estimate, the curve of a single estimate, the summary held
against an idle machine's figures, the resume header's two budgets, and what a stop leaves.

The schedule is proved on a fake clock: a step, a forward pass, a sample's characters and a save
cost what the test says, whatever the machine running the test is doing."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST, FAST_FLAGS, SGPT, run_env
from sgpt_cli.train import checkpoint, trainer
from sgpt_cli.term.app import app
from sgpt_cli.config import IDLE_FIGURES, build_train_config
from sgpt_cli.data import read_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SlowMachine:
    """Deterministic time: a training step costs `step` seconds (`first` for the very first), an
    estimate's batch `forward`, a sample `forward / 20` per character, a save 0.1 s, and the
    whole-split measurement its batches' forward passes. Costs are booked by kind."""

    def __init__(self, monkeypatch, step: float, forward: float, first: float | None = None):
        self.now, self.steps = 0.0, 0
        self.spent = {"step": 0.0, "estimate": 0.0, "sample": 0.0}
        monkeypatch.setattr(trainer.time, "perf_counter", lambda: self.now)
        real_sample = trainer.Batches.sample

        def sample(batches, gen):
            if torch.is_grad_enabled():  # a training step's batch
                self.steps += 1
                self.charge("step", first if first is not None and self.steps == 1 else step)
            else:  # an estimate's
                self.charge("estimate", forward)
            return real_sample(batches, gen)

        monkeypatch.setattr(trainer.Batches, "sample", sample)
        real_generate = trainer.GPT.generate

        def generate(model, idx, n, **kwargs):
            self.charge("sample", n * forward / 20)
            return real_generate(model, idx, n, **kwargs)

        monkeypatch.setattr(trainer.GPT, "generate", generate)
        real_save = checkpoint.save

        def save(path, payload):
            real_save(path, payload)
            self.now += 0.1

        monkeypatch.setattr(checkpoint, "save", save)
        real_whole = trainer.whole_split_loss

        def whole(model, ids, deadline=None, batch=32):
            self.now += len(ids) / (model.cfg.block_size * 8) * forward  # the tiny preset's batch of 8
            return real_whole(model, ids, None, batch)

        monkeypatch.setattr(trainer, "whole_split_loss", whole)

    def charge(self, kind: str, seconds: float) -> None:
        self.now += seconds
        self.spent[kind] += seconds


def budgeted(text_file: Path, out: Path, budget: float, callback=None, **overrides):
    cfg = build_train_config("tiny", {"max_iters": 10**6, "time_budget": budget, "eval_interval": 250,
                                      "eval_iters": 20, "sample_chars": 200, **overrides})
    text, sha = read_text(text_file)
    return trainer.train(cfg, text, sha, out, device="cpu", callback=callback or (lambda e: None))


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in checkpoint.metrics_path(out).read_text().splitlines()]


# --- 1. the schedule of estimates ---

@pytest.mark.parametrize("machine", ["busy", "idle"])
def test_a_budgeted_run_gets_a_curve_of_estimates_that_costs_at_most_its_share(tmp_path, text_file, monkeypatch,
                                                                                machine):
    # busy: the 97 steps in a 280 s budget (2.85 s a step), where --eval-interval 250 gave
    # one estimate at the very end; idle: 4 steps a second, where --eval-interval 50 comes first
    step, interval, budget = {"busy": (2.85, 250, 280.0), "idle": (0.25, 50, 120.0)}[machine]
    clock = SlowMachine(monkeypatch, step=step, forward=step / 3)
    out = tmp_path / "m.pt"
    result = budgeted(text_file, out, budget, eval_interval=interval)
    rows = rows_of(out)
    assert result.status == "time" and result.elapsed <= budget
    assert len(rows) >= 6  # a curve, not a point
    gaps = [b["elapsed"] - a["elapsed"] for a, b in zip(rows, rows[1:])]
    assert max(gaps) <= budget / 4  # spread over the budget, not bunched at one end
    if machine == "idle":
        iters = [r["iter"] for r in rows]
        assert all(b - a <= interval for a, b in zip(iters, iters[1:]))  # --eval-interval stays the most apart
    # the estimates before the last, and their samples, take at most EVAL_SHARE of the training
    last = rows[-1]["eval_batches"] * 2 * step / 3
    periodic = clock.spent["estimate"] + clock.spent["sample"] - last
    assert periodic <= trainer.EVAL_SHARE * clock.spent["step"] * 1.01


def test_estimates_shrink_to_their_share_and_samples_to_what_is_left(tmp_path, text_file, monkeypatch):
    SlowMachine(monkeypatch, step=2.85, forward=0.95)
    events = []
    out = tmp_path / "m.pt"
    budgeted(text_file, out, 280.0, callback=events.append)
    evals = [e for e in events if e.kind == "eval"]
    assert all(e.info["batches"] < e.info["eval_iters"] == 20 for e in evals)  # 20 would cost 38 s each
    assert [e.info["batches"] for e in evals] == [r["eval_batches"] for r in rows_of(out)]
    assert all(len(e.sample) < 200 for e in evals)  # no time for a whole sample on this machine


def test_a_run_without_a_budget_keeps_its_eval_interval_and_eval_iters(tmp_path, text_file, monkeypatch):
    SlowMachine(monkeypatch, step=2.85, forward=0.95)
    out = tmp_path / "m.pt"
    cfg = build_train_config("tiny", {**FAST, "max_iters": 30, "eval_interval": 10, "eval_iters": 3})
    text, sha = read_text(text_file)
    trainer.train(cfg, text, sha, out, device="cpu")
    assert [(r["iter"], r["eval_batches"]) for r in rows_of(out)] == [(10, 3), (20, 3), (30, 3)]


# --- 2. a short budget trains, and its last estimate fits the time left ---

def test_a_short_budget_trains_most_of_it_and_its_last_estimate_shrinks_to_fit(tmp_path, text_file, monkeypatch):
    # the fine-tuning run: 60 s, --eval-iters 20, a first step far slower than the rest;
    # holding back a whole estimate priced at that first step left time for one step
    SlowMachine(monkeypatch, step=0.5, forward=0.5 / 3, first=10.0)
    out = tmp_path / "m.pt"
    result = budgeted(text_file, out, 60.0, sample_chars=0)
    assert result.status == "time" and result.elapsed <= 60.0
    assert result.iters >= 70  # (60 s - the first 10 s) / 0.5 s = 100 at most
    final = torch.load(checkpoint.last_path(out), weights_only=True)
    assert final["iter"] == result.iters  # the last estimate and its checkpoint happened, inside the budget
    assert rows_of(out)[-1]["iter"] == result.iters


def test_the_budget_holds_back_at_most_its_share_for_the_last_estimate(tmp_path, text_file, monkeypatch):
    cfg = build_train_config("tiny", {"time_budget": 60.0, "eval_iters": 200})
    text, sha = read_text(text_file)
    run = trainer.setup(cfg, text, sha, tmp_path / "m.pt", "cpu", None, None, None)
    run.pace.steps.append(1.0)  # a forward pass: a third of that
    assert run.final_estimate_seconds() == pytest.approx(trainer.EVAL_SHARE * 60.0)  # not 200 batches' 133 s
    run.pace.steps[0] = 100.0  # one batch per split is the least an estimate is
    assert run.final_estimate_seconds() == pytest.approx(2 * 100.0 / 3)
    run.cfg.eval_iters = 2
    run.pace.steps[0] = 0.01
    assert run.final_estimate_seconds() == pytest.approx(2 * 2 * 0.01 / 3)  # a small estimate: all of it


# --- 1. what is shown: a piped run's lines, one point's curve, the summary ---

def test_a_piped_run_prints_a_line_per_estimate_as_it_goes(tmp_path, text_file):
    # no terminal and no PYTHONUNBUFFERED: what `sgpt train | tee log` gets
    out = tmp_path / "m.pt"
    env = run_env(OMP_NUM_THREADS=1)
    env.pop("PYTHONUNBUFFERED", None)
    cmd = [*SGPT, "train", *FAST_FLAGS, "--max-iters", "1000000", "--eval-interval", "1000000",
           "--time-budget", "16", "--data", str(text_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        seen = []
        for line in proc.stdout:
            if "estimates" in line and line.startswith("iter "):
                seen.append(line)
                if len(seen) == 2:  # by the clock (16 s / 8), not by --eval-interval
                    break
        running = proc.poll() is None  # the lines came while it ran, not at its exit
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert len(seen) == 2 and running, stderr
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert len([r for r in rows_of(out)]) >= 2
    saved = torch.load(checkpoint.last_path(out), weights_only=True)["iter"]
    assert f"iteration {saved} is saved" in stderr


def test_one_estimate_is_drawn_as_a_point_and_its_label_clears_the_title(tmp_path):
    import matplotlib.image
    from matplotlib.text import Text

    from sgpt_cli.train import plot

    rows = [{"iter": 97, "train_loss": 2.39, "val_loss": 2.3861, "lr": 1e-3, "elapsed": 276.0}]
    fig = plot.loss_figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    title = ax.title.get_window_extent(renderer)
    for text in fig.findobj(Text):
        if text is not ax.title and text.get_text() and text.get_visible():
            assert not text.get_window_extent(renderer).overlaps(title), text.get_text()
    assert "2.3861" in ax.get_title()
    x, y = ax.transData.transform((97, 2.3861))
    png = tmp_path / "curve.png"
    fig.savefig(png, format="png")
    image = matplotlib.image.imread(png)  # rows from the top
    height = image.shape[0]
    patch = image[int(height - y) - 3:int(height - y) + 4, int(x) - 3:int(x) + 4, :3]
    assert (patch.max(axis=-1) - patch.min(axis=-1)).max() > 0.3  # a coloured mark where the estimate is
    text = plot.render_curves(_metrics(tmp_path, rows), tmp_path / "m.loss.png").plain
    assert "one estimate, at iteration 97" in text and not set(plot.BARS) & set(text)  # no one-bar "curve"


def _metrics(folder: Path, rows: list[dict]) -> Path:
    path = folder / "m.metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_summary_says_how_far_a_slow_run_is_from_an_idle_machine_and_why():
    from sgpt_cli.term.train_run import idle_comparison

    cfg = build_train_config("cpu", {})
    idle = IDLE_FIGURES["cpu"]
    slow = trainer.Result("time", 97, 2.39, 276.0, Path("m.pt"), Path("m.last.pt"), 97, 2.3861)
    line = idle_comparison(cfg, slow, "cpu", 1, default_data=True, precision=idle.precision, cpu=idle.cpu)
    chars = cfg.batch_size * cfg.block_size
    assert "97 iterations" in line and f"{97 / 276 * chars:,.0f} tokens/s" in line and idle.machine in line
    assert f"{idle.iters_per_s * chars:,.0f} tokens/s" in line and "a busy machine or fewer cores" in line
    assert f"~{idle.iters_per_s * 280:,.0f} iterations in this budget" in line
    assert f"{idle.iters_per_s / (97 / 276):.1f}x slower" in line
    assert f"val 2.3861 vs {idle.val_loss:.4f} there (+{2.3861 - idle.val_loss:.4f})" in line
    pace = trainer.Result("time", round(idle.iters_per_s * 280), 1.6, 280.0, Path("m.pt"), Path("m.last.pt"),
                          1, 1.55)
    assert "slower" not in idle_comparison(cfg, pace, "cpu", 1, default_data=True, precision=idle.precision, cpu=idle.cpu)
    assert "precision" not in line
    # the same CPU whose matmuls ran in the other precision (forced, or the probe's verdict) is told that too
    other = next(p for p in ("float32", "bfloat16") if p != idle.precision)
    why = idle_comparison(cfg, slow, "cpu", 1, default_data=True, precision=other, cpu=idle.cpu)
    assert f"this run's matmuls were {other}, the figures' {idle.precision} (--precision" in why
    assert "a busy machine or fewer cores" in why
    # the figures are the cpu preset's own: another shape, preset or device has none
    for other_run, device in ((build_train_config("cpu", {"n_layer": 6}), "cpu"), (build_train_config("tiny", {}), "cpu"),
                              (cfg, "cuda")):
        assert idle_comparison(other_run, slow, device, 1, True, precision=idle.precision, cpu=idle.cpu) is None
    # another text, or another budget: the pace alone (the val figure belongs to the default run)
    assert f"{idle.val_loss:.4f}" not in idle_comparison(cfg, slow, "cpu", 1, default_data=False,
                                                         precision=idle.precision, cpu=idle.cpu)


def test_a_run_on_another_cpu_than_the_idle_figures_names_both_instead_of_calling_itself_slow():
    from sgpt_cli.term.train_run import idle_comparison

    cfg = build_train_config("cpu", {})
    idle = IDLE_FIGURES["cpu"]
    slow = trainer.Result("time", 97, 2.39, 276.0, Path("m.pt"), Path("m.last.pt"), 97, 2.3861)
    line = idle_comparison(cfg, slow, "cpu", 1, default_data=True, precision="float32", cpu="AMD EPYC (family 25, model 1)")
    assert f"figures measured on {idle.cpu}; this is AMD EPYC (family 25, model 1), its matmuls float32" in line
    assert "slower" not in line and "busy machine" not in line
    assert idle.machine in line and "97 iterations" in line and f"vs {idle.val_loss:.4f} there" in line
    # the same CPU, however the OS spaces or cases its name: the pace comparison
    assert "slower" in idle_comparison(cfg, slow, "cpu", 1, True, precision=idle.precision,
                                       cpu=f"  {idle.cpu.upper()} ")


def test_a_cpu_preset_run_ends_with_the_idle_comparison(tmp_path, text_file):
    result = CliRunner().invoke(app, ["train", "--preset", "cpu", "--max-iters", "2", "--eval-iters", "1",
                                      "--sample-chars", "0", "--device", "cpu", "--data", str(text_file),
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    done = next(i for i, line in enumerate(lines) if line.startswith("done: 2 iterations"))
    assert lines[done + 1].startswith("  this run: 2 iterations at ") and IDLE_FIGURES["cpu"].machine in lines[done + 1]


# --- 3. the resume header ---

def test_the_resume_header_shows_the_budget_added_and_the_total(tmp_path, text_file):
    out = tmp_path / "m.pt"
    first = CliRunner().invoke(app, ["train", *FAST_FLAGS, "--data", str(text_file), "--out", str(out),
                                     "--max-iters", "4", "--eval-interval", "2", "--time-budget", "100"])
    assert first.exit_code == 0, first.output
    last = checkpoint.load(checkpoint.last_path(out))
    checkpoint.save(checkpoint.last_path(out), {**last, "train_seconds": 40.0})  # as if it had run 40 s
    resumed = CliRunner().invoke(app, ["train", *FAST_FLAGS, "--data", str(text_file), "--out", str(out),
                                       "--resume", "--time-budget", "45", "--max-iters", "6"])
    assert resumed.exit_code == 0, resumed.output
    header = resumed.stdout.splitlines()[0]
    assert "resuming from iteration 4" in header and "time budget 0:45 more, 1:25 in all" in header
    fresh = first.stdout.splitlines()[0]
    assert "time budget 1:40" in fresh and "more" not in fresh


# --- 4. what a stop leaves ---

def signal_at(monkeypatch, where: str, after_steps: int):
    """Send this process SIGTERM (to the handler `sgpt train` installs) at `where`, once `after_steps`
    steps have finished: inside a step, between steps, inside an estimate or inside a sample."""
    state = {"done": False}

    def fire(steps_done: int, kind: str) -> None:
        if not state["done"] and kind == where and steps_done >= after_steps:
            state["done"] = True
            signal.raise_signal(signal.SIGTERM)

    real_sample = trainer.Batches.sample

    def sample(batches, gen):
        x = real_sample(batches, gen)
        fire(finished["steps"], "step" if torch.is_grad_enabled() else "estimate")
        return x

    finished = {"steps": 0}
    real_event = trainer.step_event

    def step_event(run, loss):
        finished["steps"] = run.it
        fire(run.it, "between")
        return real_event(run, loss)

    real_generate = trainer.GPT.generate

    def generate(model, idx, n, **kwargs):
        fire(finished["steps"], "sample")
        return real_generate(model, idx, n, **kwargs)

    monkeypatch.setattr(trainer.Batches, "sample", sample)
    monkeypatch.setattr(trainer, "step_event", step_event)
    monkeypatch.setattr(trainer.GPT, "generate", generate)


def test_a_stop_before_the_first_step_finished_says_so_and_how_long_it_ran(tmp_path, text_file, monkeypatch):
    # the gpu preset on a busy CPU: the first step had run 48 s when SIGTERM came
    SlowMachine(monkeypatch, step=48.0, forward=16.0)
    signal_at(monkeypatch, "step", 0)
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(app, ["train", *FAST_FLAGS, "--data", str(text_file), "--out", str(out),
                                      "--max-iters", "100"])
    assert result.exit_code == 130, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["sgpt: interrupted before the first step finished (it had run 48 s; a step takes longer "
                     "than that here), so there was nothing to save"]
    assert not out.exists() and not checkpoint.last_path(out).exists()


@pytest.mark.parametrize("where", ["step", "between", "estimate", "sample"])
def test_once_a_step_has_finished_a_stop_leaves_it_on_disk(tmp_path, text_file, monkeypatch, where):
    signal_at(monkeypatch, where, 1)
    out = tmp_path / "m.pt"
    interval = "1" if where in ("estimate", "sample") else "50"
    args = ["train", "--preset", "tiny", "--eval-iters", "2", "--device", "cpu", "--data", str(text_file),
            "--out", str(out), "--max-iters", "100", "--eval-interval", interval, "--sample-chars", "40"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    saved = torch.load(checkpoint.last_path(out), weights_only=True)["iter"]
    assert saved >= 1 and f"iteration {saved} is saved" in result.stderr
    assert saved <= 2  # within a step of the signal: the stop did not wait for the run to go on
    if where == "sample":  # a sample is only for show: the stop cut it, the estimate's line came alone
        lines = result.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("iter      1  estimates"))
        assert lines[at + 1].startswith("val loss estimate"), lines


def test_under_torchrun_the_ranks_agree_on_estimates_scheduled_by_the_clock(tmp_path, text_file):
    # estimates come by rank 0's clock and pace (`agree`): a rank deciding by its own would wait in
    # the estimate's collective for ever (the run would hang, not end)
    from test_ddp import torchrun

    out = tmp_path / "m.pt"
    proc = torchrun("--data", str(text_file), "--out", str(out), "--max-iters", "1000000", "--eval-interval",
                    "1000000", "--time-budget", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("time budget spent") == 1
    assert len(rows_of(out)) >= 3  # by the clock (8 s / 8), not by --eval-interval


def test_a_stop_while_the_last_checkpoint_is_written_skips_the_whole_split_measurement(tmp_path, text_file,
                                                                                       monkeypatch):
    # the request waits for the checkpoint (critical), then cuts what comes next before it starts:
    # the whole split may take minutes on a busy machine, and it is only a measurement
    from sgpt_cli.term.train_run import StopRequest

    stop = StopRequest(announce=False)
    real_save = checkpoint.save

    def save_under_fire(path, payload):
        stop.handle(signal.SIGTERM, None)
        real_save(path, payload)

    monkeypatch.setattr(checkpoint, "save", save_under_fire)
    measured = []
    monkeypatch.setattr(trainer, "whole_split_loss", lambda *a, **k: measured.append(1) or 1.0)
    cfg = build_train_config("tiny", {**FAST, "max_iters": 4, "eval_interval": 100})
    text, sha = read_text(text_file)
    result = trainer.train(cfg, text, sha, tmp_path / "m.pt", device="cpu", should_stop=stop)
    assert (result.status, result.saved_iter, result.val_loss) == ("interrupted", 4, None)
    assert measured == [] and torch.load(checkpoint.last_path(tmp_path / "m.pt"), weights_only=True)["iter"] == 4
