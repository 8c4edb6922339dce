"""The optimizers `sgpt train` offers: AdamW, or Muon for the blocks' matrices with AdamW for the rest.

What it holds: `build_optimizer(model, cfg, fused)`, which returns one object with the optimizer
interface the training loop uses (`param_groups`, `zero_grad`, `step`, `state_dict`,
`load_state_dict`). Every param group carries an `lr_scale`, so the loop's schedule sets
`group["lr"] = lr * group["lr_scale"]` and Muon can run at a multiple of the AdamW rate.

What it does not do: schedule learning rates or clip gradients (the loop does both).

Muon (Keller Jordan; modded-nanoGPT's speed records) orthogonalises the momentum of each hidden
weight matrix with a few Newton-Schulz steps. It is meant for the 2-D matrices inside the blocks
only: the embedding (tied to the head) and the LayerNorm gains stay with AdamW.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "muon")


class ChainedOptimizer:
    """Several optimizers stepped together, seen by the loop as one."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"chained": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state.get("chained", [state])  # a checkpoint from before the chain held one AdamW
        if len(states) != len(self.optimizers):
            raise ValueError("the saved optimizer state is for another --optimizer")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)


def _adamw(groups: list[dict], cfg, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


def build_optimizer(model: torch.nn.Module, cfg, fused: bool = False) -> ChainedOptimizer:
    """AdamW everywhere (decay on matrices only), or Muon on the blocks' matrices + AdamW elsewhere."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in named if p.dim() >= 2]
    vectors = [p for n, p in named if p.dim() < 2]
    if cfg.optimizer == "adamw":
        return ChainedOptimizer(_adamw([
            {"params": matrices, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
            {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0},
        ], cfg, fused))
    hidden = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
    hidden_ids = {id(p) for p in hidden}
    embeddings = [p for p in matrices if id(p) not in hidden_ids]  # wte, tied to lm_head
    muon = torch.optim.Muon(
        [{"params": hidden, "lr_scale": cfg.muon_lr_scale}],
        lr=cfg.learning_rate * cfg.muon_lr_scale, weight_decay=cfg.weight_decay,
        momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw",  # AdamW-sized updates: one lr scale
    )
    adamw = _adamw([
        {"params": embeddings, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0},
    ], cfg, fused)
    return ChainedOptimizer(muon, adamw)


__all__ = ["OPTIMIZERS", "ChainedOptimizer", "build_optimizer"]
