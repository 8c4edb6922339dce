"""What a training measures: the periodic estimate of the train and val losses on fixed batches
(`estimate_loss`, sized to the time it is given), the one whole-split validation loss
(`whole_split_loss`, the protocol of `sgpt eval` and export), and the sample shown with an estimate.

What it does not do: decide when to measure (sgpt_cli.train.schedule), save or report (the trainer).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sgpt_cli.train.model import GPT
from sgpt_cli.train.stop import Stop

if TYPE_CHECKING:  # the run whose model and batches these read
    from sgpt_cli.train.trainer import Run


@torch.no_grad()
def estimate_loss(run: Run, stop: Stop, n_batches: int | None = None, deadline: float | None = None
                  ) -> tuple[float, float, int]:
    """Train and val loss on the first `n_batches` (default --eval-iters) of fixed batches each: a
    cheap, smooth estimate for the curve and for choosing the best checkpoint (the whole split is
    measured once, at the end). In float32 whatever the run's --precision, as the whole split is:
    the two agree, and an estimate's pace sizes the whole split's reserve. Each split gets half the
    time to `deadline` (a perf_counter time) and stops there after one batch at least. Returns
    (train, val, the fewest batches a split got)."""
    t0 = time.perf_counter()
    n_batches = n_batches or run.cfg.eval_iters
    run.raw_model.eval()
    losses, done, fewest = {}, 0, n_batches
    try:
        with stop.abortable():  # a stop request throws the estimate away: the step it belongs to is whole
            for k, (name, batches) in enumerate((("val", run.val_batches), ("train", run.train_batches))):
                ends = None if deadline is None else t0 + (deadline - t0) * (k + 1) / 2
                g = torch.Generator().manual_seed(run.cfg.seed + 1)  # the same batches every time: a smooth curve
                total, n = 0.0, 0
                while n < n_batches and (n == 0 or ends is None or time.perf_counter() < ends):
                    x, y = batches.sample(g)
                    logits, _ = run.raw_model(x)  # in float32, as the whole split is measured
                    total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1)).item()
                    n += 1
                losses[name], done, fewest = total / n, done + n, min(fewest, n)
    finally:
        run.raw_model.train()
    run.pace.batch_seconds = (time.perf_counter() - t0) / done
    return losses["train"], losses["val"], fewest


@torch.no_grad()
def whole_split_loss(model: GPT, ids: torch.Tensor, deadline: float | None = None, batch: int = 32) -> float | None:
    """Mean cross-entropy (nats/char) over the whole split, in non-overlapping windows of block_size
    (the protocol of `sgpt eval` and export: onnx_model.score_ids), in float32. None if `deadline`
    (a perf_counter time) passes first."""
    T = model.cfg.block_size
    n = (len(ids) - 1) // T
    if n == 0:
        T, n = len(ids) - 1, 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for b in range(0, n, batch):
            if deadline is not None and time.perf_counter() > deadline:
                return None
            starts = torch.arange(b, min(b + batch, n)) * T
            win = ids[starts[:, None] + torch.arange(T + 1)].to(device)  # (b, T+1)
            logits, _ = model(win[:, :-1])
            logp = F.log_softmax(logits.double(), dim=-1)
            total -= logp.gather(-1, win[:, 1:, None]).sum().item()
            count += win[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


SAMPLE_CHUNK = 20  # characters generated between looks at the clock


def sample_text(run: Run, stop: Stop | None = None, deadline: float | None = None) -> str:
    """Up to --sample-chars characters, fewer when `deadline` (a perf_counter time) comes first. A stop
    request cuts it short (a sample is only for show). The model recomputes its whole window for
    each character, so generating in chunks gives the same text as at once."""
    if run.cfg.sample_chars <= 0 or (deadline is not None and time.perf_counter() >= deadline):
        return ""
    model, device = run.raw_model, run.device
    g = torch.Generator(device=device).manual_seed(run.cfg.seed)  # its own stream: training's stays put
    idx = torch.tensor([[run.tokenizer.stoi.get("\n", 0)]], device=device)
    model.eval()
    try:
        with (stop or Stop()).abortable(), run.autocast():
            while idx.shape[1] - 1 < run.cfg.sample_chars and (deadline is None or time.perf_counter() < deadline):
                n = min(SAMPLE_CHUNK, run.cfg.sample_chars - (idx.shape[1] - 1))
                idx = model.generate(idx, n, temperature=0.8, top_k=None, generator=g)
    except KeyboardInterrupt:
        if stop is None or not stop.requested:
            raise
        # a stop request: the loop sees it at the next step boundary
    finally:
        model.train()
    return run.tokenizer.decode(idx[0, 1:].tolist())
