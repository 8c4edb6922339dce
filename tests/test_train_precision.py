"""`sgpt train --precision`: which precision `auto` picks where, that a bfloat16 run on the CPU trains
float32 weights close to a float32 run's (and really ran in bfloat16), that attention stays in float32
under the CPU's autocast, and that Muon's Newton-Schulz in bfloat16 stays close to float32's."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST
from sgpt_cli.config import build_train_config
from sgpt_cli.data import read_text
from sgpt_cli.train import checkpoint, trainer
from sgpt_cli.train.device import BF16_CPU_MIN_WIDTH
from sgpt_cli.train.model import GPT
from sgpt_cli.train.optim import orthogonalise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("requested, device, amx, width, expected", [
    ("auto", "cpu", True, 128, "bfloat16"),  # AMX tiles: bf16 matmuls 4x float32's
    ("auto", "cpu", True, BF16_CPU_MIN_WIDTH, "bfloat16"),
    ("auto", "cpu", True, BF16_CPU_MIN_WIDTH - 1, "float32"),  # too narrow: the casts cost more
    ("auto", "cpu", False, 128, "float32"),  # no AMX: bf16 is emulated, slower
    ("auto", "cpu", None, 128, "float32"),  # a torch without the probe: no AMX assumed
    ("auto", "cuda", False, 32, "bfloat16"),
    ("float32", "cpu", True, 128, "float32"),  # an explicit choice is kept wherever it runs
    ("bfloat16", "cpu", False, 32, "bfloat16"),
    ("float32", "cuda", False, 128, "float32"),
])
def test_auto_precision_is_bfloat16_on_cuda_and_on_a_cpu_with_amx_and_float32_elsewhere(
        requested, device, amx, width, expected, monkeypatch):
    if amx is None:
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert trainer.resolve_precision(requested, device, width) == expected


def _train(text_file, out, precision: str, events: list):
    cfg = build_train_config("tiny", {**FAST, "max_iters": 30, "eval_interval": 15, "precision": precision})
    text, sha = read_text(text_file)
    return trainer.train(cfg, text, sha, out, device="cpu", callback=events.append)


def test_a_bfloat16_run_on_the_cpu_trains_float32_weights_close_to_a_float32_run(tmp_path, text_file):
    runs = {}
    for precision in ("float32", "bfloat16"):
        events = []
        result = _train(text_file, tmp_path / f"{precision}.pt", precision, events)
        assert result.status == "done" and result.iters == 30
        assert next(e for e in events if e.kind == "start").info["precision"] == precision
        runs[precision] = result
        state = checkpoint.load(tmp_path / f"{precision}.pt")["model"]
        assert all(t.dtype == torch.float32 for t in state.values())  # autocast: the weights stay float32
    f32, bf16 = runs["float32"].val_loss, runs["bfloat16"].val_loss
    assert bf16 != f32  # the bfloat16 run really ran in bfloat16
    assert abs(bf16 - f32) < 0.05 * f32  # and learned as much


def test_attention_under_the_cpus_bfloat16_autocast_runs_in_float32_and_its_gradients_match():
    """The CPU's bf16 flash-attention backward is ~4x slower than float32's, so the training path
    keeps attention in float32 under autocast: its output is float32, and the whole model's
    gradients under autocast point where the float32 ones do."""
    torch.manual_seed(0)
    model = GPT(build_train_config("tiny", {}).model_config(vocab_size=11))
    q = torch.randn(2, 2, 8, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.blocks[0].attn._causal(q, q, q, dropout=0.0, gqa=False).dtype == torch.float32
    x = torch.randint(0, 11, (4, 32))
    grads = {}
    for name, autocast in (("float32", False), ("bfloat16", True)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits, _ = model(x)
        torch.nn.functional.cross_entropy(logits.float().view(-1, 11), x.view(-1)).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.equal(grads["float32"], grads["bfloat16"])
    assert torch.nn.functional.cosine_similarity(grads["float32"], grads["bfloat16"], dim=0) > 0.99


@pytest.mark.parametrize("shape", [(24, 8), (8, 24), (3, 16, 48)])
def test_newton_schulz_in_bfloat16_is_close_to_float32_and_returns_the_input_dtype(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    f32, bf16 = orthogonalise(g, 5), orthogonalise(g, 5, torch.bfloat16)
    assert bf16.dtype == torch.float32 and bf16.shape == g.shape
    assert not torch.equal(f32, bf16)
    assert (bf16 - f32).norm() < 0.05 * f32.norm()


def test_estimates_run_in_float32_whatever_the_precision_so_they_pace_the_whole_split(tmp_path, text_file):
    """The estimates' forward passes size the reserve for the whole-split measurement, which is float32:
    a bfloat16 run's estimates are float32 too (the same figures as a float32 run's from the same
    weights), or the reserve would be too short by bfloat16's speed-up and the final measure lost."""
    text, sha = read_text(text_file)
    figures = {}
    for precision in ("float32", "bfloat16"):
        cfg = build_train_config("tiny", {**FAST, "precision": precision})
        run = trainer.setup(cfg, text, sha, tmp_path / f"{precision}.pt", "cpu", None, None, None)
        assert run.precision == precision
        figures[precision] = trainer.estimate_loss(run, trainer.Stop(), 2)
    assert figures["bfloat16"] == figures["float32"]
