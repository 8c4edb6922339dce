"""`--precision auto` on a CPU: the probe's faster precision is chosen, its verdict is cached per CPU,
torch version, threads and model shape (measured again when one changes), a cache file that is not
ours is ignored and replaced without a traceback, and an explicit `--precision` never probes. The probe
is faked with fixed figures here: no test times anything."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import FAST
from sgpt_cli.config import ModelConfig, build_train_config
from sgpt_cli.data import read_text
from sgpt_cli.train import precision, trainer
from sgpt_cli.train.model import GPT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDE = precision.BF16_CPU_MIN_WIDTH


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=WIDE))


class FakeProbe:
    """Seconds per step it was told, and how often it was asked."""

    def __init__(self, float32: float, bfloat16: float):
        self.seconds = {"float32": float32, "bfloat16": bfloat16}
        self.calls = 0

    def __call__(self, model, batch, block):
        self.calls += 1
        return dict(self.seconds)


def choose(model, probe, home, requested="auto", device="cpu"):
    return precision.resolve_precision(requested, device, model, 8, 16, probe=probe, home=home)


@pytest.mark.parametrize("f32, bf16, expected, why", [
    (0.100, 0.062, "bfloat16", "bfloat16: 1.61x float32 on this CPU (measured"),
    (0.100, 0.250, "float32", "float32: bfloat16 0.40x on this CPU (measured"),
    (0.100, 0.098, "float32", "float32: bfloat16 1.02x on this CPU"),  # within the margin: the exact one
    (0.100, math.inf, "float32", "float32: bfloat16 does not run on this CPU"),
])
def test_auto_on_a_cpu_picks_the_precision_the_probe_measured_faster_and_says_why(
        model, tmp_path, f32, bf16, expected, why):
    probe = FakeProbe(f32, bf16)
    choice = choose(model, probe, tmp_path)
    assert (choice.precision, probe.calls) == (expected, 1)
    assert choice.why.startswith(why)


def test_a_cached_verdict_is_reused_without_probing(model, tmp_path):
    first = choose(model, FakeProbe(0.1, 0.05), tmp_path)
    assert first.precision == "bfloat16" and "(measured" in first.why
    again = FakeProbe(0.1, 0.5)  # would say float32, if it were asked
    second = choose(model, again, tmp_path)
    assert again.calls == 0
    assert second == precision.Choice("bfloat16", "bfloat16: 2.00x float32 on this CPU (cached)")
    saved = json.loads((tmp_path / precision.CACHE_NAME).read_text())
    assert [v["precision"] for v in saved["verdicts"]] == ["bfloat16"]


def test_a_cache_file_is_written_through_the_atomic_writer_and_keeps_other_machines_verdicts(
        model, tmp_path, monkeypatch):
    written = []
    real = precision.atomic_write_text
    monkeypatch.setattr(precision, "atomic_write_text", lambda *a, **k: (written.append(a[0]), real(*a, **k)))
    choose(model, FakeProbe(0.1, 0.05), tmp_path)
    monkeypatch.setattr(precision, "cpu_name", lambda info=None: "Another CPU")
    monkeypatch.setattr(precision, "cpuinfo", lambda path="": {"model name": "Another CPU", "flags": "avx2"})
    choose(model, FakeProbe(0.1, 0.5), tmp_path)
    assert written == [tmp_path / precision.CACHE_NAME] * 2
    saved = json.loads((tmp_path / precision.CACHE_NAME).read_text())["verdicts"]
    assert [(v["cpu"], v["precision"]) for v in saved][0] == ("Another CPU", "float32")
    assert [v["precision"] for v in saved] == ["float32", "bfloat16"]  # the newest first, both kept
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("change", ["torch version", "cpu", "cpu flags", "threads", "model shape"])
def test_a_verdict_is_measured_again_when_the_machine_torch_or_the_shape_changes(
        model, tmp_path, monkeypatch, change):
    assert choose(model, FakeProbe(0.1, 0.05), tmp_path).precision == "bfloat16"
    info = precision.cpuinfo()
    if change == "torch version":
        monkeypatch.setattr(torch, "__version__", "99.0.0")
    elif change == "cpu":
        monkeypatch.setattr(precision, "cpu_name", lambda info=None: "AMD EPYC (family 25, model 17)")
    elif change == "cpu flags":
        monkeypatch.setattr(precision, "cpuinfo", lambda path="": {**info, "flags": info.get("flags", "") + " avx512_bf16"})
    elif change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    else:
        model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=WIDE))
    probe = FakeProbe(0.1, 0.5)
    choice = choose(model, probe, tmp_path)
    assert probe.calls == 1 and choice.precision == "float32" and "(measured" in choice.why


HOSTILE = {
    "not JSON": b"\x00\xff{{{ not json",
    "a JSON list": b"[1, 2, 3]",
    "another format": json.dumps({"format": 99, "verdicts": []}).encode(),
    "verdicts not a list": json.dumps({"format": 1, "verdicts": {"a": 1}}).encode(),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "too large": b" " * (precision.CACHE_MAX_BYTES + 10),
    "invalid UTF-8": b'{"format": 1, "verdicts": ["\xff"]}',
}


@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_cache_file_that_is_not_ours_is_ignored_then_replaced(model, tmp_path, content):
    (tmp_path / precision.CACHE_NAME).write_bytes(content)
    probe = FakeProbe(0.1, 0.05)
    assert choose(model, probe, tmp_path).precision == "bfloat16" and probe.calls == 1
    assert choose(model, FakeProbe(0.1, 0.5), tmp_path).why.endswith("(cached)")  # replaced by a good one


def test_forged_verdicts_in_a_cache_are_not_believed(model, tmp_path):
    """Entries of the right key but the wrong kinds (a precision that does not exist, a time that is no
    number, NaN, a negative, a boolean) are measured again, never used."""
    choose(model, FakeProbe(0.1, 0.05), tmp_path)
    path = tmp_path / precision.CACHE_NAME
    good = json.loads(path.read_text())["verdicts"][0]
    for forged in ({"precision": "float16"}, {"precision": ["bfloat16"]}, {"float32_s": "fast"},
                   {"float32_s": math.nan}, {"bfloat16_s": -1.0}, {"bfloat16_s": True}, {"key": good["key"].upper()}):
        path.write_text(json.dumps({"format": 1, "verdicts": ["junk", None, {**good, **forged}]}))
        probe = FakeProbe(0.1, 0.5)
        assert choose(model, probe, tmp_path).precision == "float32" and probe.calls == 1, forged


@pytest.mark.parametrize("kind", ["folder", "fifo", "link to a device"])
def test_a_cache_path_that_is_no_regular_file_neither_blocks_nor_fails_the_run(model, tmp_path, kind):
    path = tmp_path / precision.CACHE_NAME
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # opening it to read would wait for a writer for ever
    else:
        path.symlink_to("/dev/null")
    probe = FakeProbe(0.1, 0.05)
    assert choose(model, probe, tmp_path).precision == "bfloat16" and probe.calls == 1
    assert not path.is_file() or path.is_symlink()  # left as it was: sgpt replaces only regular files


def test_an_unwritable_home_still_gives_a_verdict(model, tmp_path):
    home = tmp_path / "home"
    home.write_text("a file where the folder should be")
    assert choose(model, FakeProbe(0.1, 0.05), home).precision == "bfloat16"


@pytest.mark.parametrize("requested, device, expected", [
    ("float32", "cpu", "float32"), ("bfloat16", "cpu", "bfloat16"), ("float32", "cuda", "float32"),
    ("bfloat16", "cuda", "bfloat16"), ("auto", "cuda", "bfloat16"),
])
def test_an_explicit_precision_or_cuda_never_probes(model, tmp_path, requested, device, expected):
    probe = FakeProbe(0.1, 0.05 if expected == "float32" else 0.5)  # it would say the other, if asked
    choice = choose(model, probe, tmp_path, requested, device)
    assert choice == precision.Choice(expected) and probe.calls == 0
    assert not (tmp_path / precision.CACHE_NAME).exists()


def test_a_model_narrower_than_the_floor_is_float32_unprobed(tmp_path):
    narrow = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=WIDE // 2))
    probe = FakeProbe(0.1, 0.01)
    choice = choose(narrow, probe, tmp_path)
    assert choice.precision == "float32" and probe.calls == 0 and f"{WIDE // 2} wide" in choice.why


def test_the_real_probe_leaves_the_runs_random_streams_and_gradients_as_they_were(model):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    seconds = precision.measure(model, 2, 16)
    assert set(seconds) == {"float32", "bfloat16"} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.grad is None for p in model.parameters())


def test_a_probe_batch_holds_at_most_the_probe_tokens():
    assert precision.probe_batch(16, 128) == 16  # the cpu preset's, whole
    assert precision.probe_batch(64, 256) == precision.PROBE_TOKENS // 256  # the gpu preset's, on a CPU
    assert precision.probe_batch(4, 100_000) == 1


def test_a_training_run_reports_the_verdict_in_its_start_event(tmp_path, text_file, monkeypatch):
    """The trainer asks the probe with its own model, and the header's reason comes with the start event."""
    asked = []

    def fake(model, batch, block):
        asked.append((model.cfg.n_embd, batch, block))
        return {"float32": 0.1, "bfloat16": 0.05}

    monkeypatch.setattr(precision, "measure", fake)
    cfg = build_train_config("tiny", {**FAST, "n_embd": WIDE, "max_iters": 2, "eval_interval": 2})
    text, sha = read_text(text_file)
    events = []
    trainer.train(cfg, text, sha, tmp_path / "m.pt", device="cpu", callback=events.append)
    start = next(e for e in events if e.kind == "start").info
    assert asked == [(WIDE, cfg.batch_size, cfg.block_size)]
    assert start["precision"] == "bfloat16" and start["precision_why"].startswith("bfloat16: 2.00x float32")


def test_the_header_says_what_auto_chose_and_why():
    from rich.console import Console

    from sgpt_cli.term.train_run import TrainDisplay

    console = Console(record=True, width=200)
    info = {"time_budget": 0.0, "device": "cpu", "world": 1, "precision": "float32", "resumed": False,
            "preset": "cpu", "optimizer": "muon", "params": 800_000, "hardware": "AMD EPYC, 2 threads",
            "train_chars": 10, "val_chars": 1, "vocab_size": 65,
            "precision_why": "float32: bfloat16 0.42x on this CPU (cached)"}
    TrainDisplay(console)(trainer.TrainEvent("start", 0, 10, info=info))
    assert "  precision float32: bfloat16 0.42x on this CPU (cached)" in console.export_text()


@pytest.mark.parametrize("f32, bf16, clear", [
    ([0.1], [0.45], True),  # emulated bfloat16 (AVX2): no more rounds needed
    ([0.1], [0.04], True),
    ([0.1, 0.1], [0.07, 0.08], False),  # close: the rounds go on (to PROBE_ROUNDS or PROBE_SECONDS)
    ([0.1], None, True),  # bfloat16 failed to run
])
def test_the_probe_stops_early_only_where_one_precision_is_far_ahead(f32, bf16, clear):
    assert precision._clear({"float32": f32, "bfloat16": bf16}) is clear


def test_under_torchrun_rank_0_measures_and_every_rank_takes_its_verdict(tmp_path, text_file):
    """Ranks must step in one precision: rank 0 probes (its verdict cached once), the others wait for
    it (a broadcast), and the run ends as any other."""
    import socket
    import subprocess
    import sys

    from conftest import run_env
    from sgpt_cli.train import checkpoint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "sgpt_cli", "train", "--preset", "tiny", "--n-embd", str(WIDE), "--eval-iters", "1",
           "--sample-chars", "0", "--device", "cpu", "--max-iters", "2", "--eval-interval", "2",
           "--data", str(text_file), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=run_env(OMP_NUM_THREADS=1, MASTER_ADDR="127.0.0.1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("  precision ") == 1 and "(measured in" in proc.stdout
    ran = checkpoint.load(checkpoint.last_path(out))["precision"]
    saved = json.loads((tmp_path / "sgpt-home" / precision.CACHE_NAME).read_text())["verdicts"]
    assert [v["precision"] for v in saved] == [ran]
