"""Loss curves from a metrics JSONL: a PNG for the user to open and a compact view for the terminal."""

from __future__ import annotations

import json
from pathlib import Path

from rich.text import Text

from sgpt_cli.errors import shown

from sgpt_cli.files import atomic_path

BARS = "▁▂▃▄▅▆▇█"
ASCII_BARS = "_.-=+*#@"  # for a terminal whose encoding has no block characters (PYTHONIOENCODING=ascii)


def can_draw(console, chars: str) -> bool:
    """Whether `console`'s stream can encode `chars` (rich writes str; the stream's codec decides)."""
    try:
        chars.encode(console.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash: skip it
    return rows


def loss_figure(rows: list[dict], title: str = "sgpt training", val_loss: float | None = None):
    """The curves as a matplotlib figure: every estimate a marked point (one estimate is still
    seen), the best val estimate as a star. The title names the run's one val loss, the whole-split
    measurement the terminal, export and eval report (`val_loss`), where there is one, and calls the
    best of the periodic figures what it is, an estimate (no label to collide with anything)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    its = [r["iter"] for r in rows]
    ax.plot(its, [r["train_loss"] for r in rows], "o-", markersize=4, label="train", color="#4c72b0")
    ax.plot(its, [r["val_loss"] for r in rows], "o-", markersize=4, label="validation", color="#dd8452")
    best = min(rows, key=lambda r: r["val_loss"])
    ax.plot([best["iter"]], [best["val_loss"]], "*", markersize=14, color="#c44e52",
            label=f"best val estimate {best['val_loss']:.4f}", zorder=3)
    if len(rows) == 1:  # one iteration alone gives no width: centre it in a visible span
        ax.set_xlim(its[0] * 0.5 - 1, its[0] * 1.5 + 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/char)")
    points = f"{len(rows)} estimate{'' if len(rows) == 1 else 's'}"
    estimate = f"best val estimate {best['val_loss']:.4f} at iteration {best['iter']} ({points})"
    if val_loss is not None:
        ax.set_title(f"{title}: val loss {val_loss:.4f} (whole validation split)\n{estimate}", fontsize="medium")
    else:
        ax.set_title(f"{title}: {estimate}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")  # clear of the curves
    fig.tight_layout()
    return fig


def write_png(rows: list[dict], png: Path, title: str = "sgpt training", val_loss: float | None = None) -> None:
    import matplotlib.pyplot as plt

    fig = loss_figure(rows, title, val_loss)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def sparkline(values: list[float], width: int = 60, bars: str = BARS) -> str:
    if not values:
        return ""
    if len(values) > width:  # keep the shape: sample evenly, always keep the last point
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width - 1)] + [values[-1]]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[min(int((hi - v) / span * (len(bars) - 1) + 0.5), len(bars) - 1)] for v in values)


def render_curves(metrics: Path, png: Path, ascii_only: bool = False, val_loss: float | None = None) -> Text:
    """Write the PNG (titled with `val_loss`, the whole-split figure, when measured) and return a
    terminal summary: val loss falling as bars grow."""
    rows = read_metrics(metrics)
    if not rows:
        return Text("")
    write_png(rows, png, val_loss=val_loss)
    vals = [r["val_loss"] for r in rows]
    t = Text()
    if len(vals) == 1:  # one point is no curve: say what there is
        t.append("val loss estimate  ", style="bold")
        t.append(f"{vals[0]:.3f}", style="bold")
        t.append(f" (one estimate, at iteration {rows[0]['iter']}; loss curve: {shown(png)})", style="dim")
        return t
    t.append("val loss estimates  ", style="bold")
    t.append(f"{vals[0]:.3f} ", style="dim")
    t.append(sparkline(vals, bars=ASCII_BARS if ascii_only else BARS), style="green")
    t.append(f" {vals[-1]:.3f}", style="bold")
    t.append(f"   (taller = lower; loss curves: {shown(png)})", style="dim")
    return t
