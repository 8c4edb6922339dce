"""The optimizers `sgpt train` offers: AdamW, or Muon for the blocks' matrices with AdamW for the rest.

What it holds: `build_optimizer(model, cfg, fused)`, which returns one object with the optimizer
interface the training loop uses (`param_groups`, `zero_grad`, `step`, `state_dict`,
`load_state_dict`). Every param group carries an `lr_scale`, so the loop's schedule sets
`group["lr"] = lr * group["lr_scale"]` and Muon can run at a multiple of the AdamW rate.

What it does not do: schedule learning rates or clip gradients (the loop does both).

Muon (Keller Jordan; modded-nanoGPT's speed records) orthogonalises the momentum of each hidden
weight matrix with a few Newton-Schulz steps. It is meant for the 2-D matrices inside the blocks
only: the embedding, the output head and the LayerNorm gains stay with AdamW. Matrices of one shape
are orthogonalised together, as one stack.
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


class Muon(torch.optim.Optimizer):
    """Muon for 2-D matrices: Nesterov momentum, orthogonalised by Newton-Schulz, AdamW-sized steps.

    torch.optim.Muon runs Newton-Schulz in bfloat16, which costs 20x float32 on CPUs without
    bf16 units (4.3 s vs 0.19 s a step for a 6 x 192 model on one thread here); this one runs it in
    `ns_dtype`: the run's precision (sgpt_cli.train.precision.resolve_precision). The update
    is scaled by 0.2 * sqrt(max(rows, cols)), so one learning rate means about what it means for AdamW.
    """

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.95, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # matrices of one shape (the same layer's in every block) are orthogonalised as one stack:
            # a few batched matmuls instead of a few per matrix (small matrices are bound by per-op cost)
            by_shape: dict[tuple, list] = {}
            for p in params:
                by_shape.setdefault(tuple(p.shape), []).append(p)
            for same in by_shape.values():
                self._step_stack(same, group)

    def _step_stack(self, params: list, group: dict) -> None:
        grads = [p.grad for p in params]
        bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
        nesterov = torch.stack(grads).lerp_(torch.stack(bufs), group["momentum"])  # (n, rows, cols)
        updates = orthogonalise(nesterov, group["ns_steps"], self.ns_dtype).unbind(0)
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"] * 0.2 * max(params[0].shape) ** 0.5)


def orthogonalise(g: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to g (rows, cols) or to each of a stack (n, rows, cols),
    roughly (Keller Jordan's quintic Newton-Schulz), computed in `dtype`."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype, copy=True)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: the Gram matrix x @ x.T is the small one
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def _adamw(groups: list[dict], cfg, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


def build_optimizer(model: torch.nn.Module, cfg, fused: bool = False,
                    ns_dtype: torch.dtype = torch.float32) -> ChainedOptimizer:
    """AdamW everywhere (decay on matrices only), or Muon on the blocks' matrices + AdamW elsewhere
    (its Newton-Schulz in `ns_dtype`)."""
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
    muon = Muon([{"params": hidden, "lr_scale": cfg.muon_lr_scale}], lr=cfg.learning_rate * cfg.muon_lr_scale,
                weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps,
                ns_dtype=ns_dtype)
    adamw = _adamw([
        {"params": embeddings, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0},
    ], cfg, fused)
    return ChainedOptimizer(muon, adamw)


__all__ = ["OPTIMIZERS", "ChainedOptimizer", "Muon", "build_optimizer", "orthogonalise"]
