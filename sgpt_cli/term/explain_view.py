"""How an `Explanation` (sgpt_cli.infer.explain) looks: in colour on a terminal (rich: bars, the lens,
each head's attention as the window's text on backgrounds shaded by weight) and plain (a pipe,
NO_COLOR, TERM=dumb: the same lines, each head's weights as digits under the characters), and as a
picture (`save_image`, matplotlib: the `train` extra). `sgpt explain` and the chat's /explain and
/next draw with it.

What it does not do: compute anything (sgpt_cli.infer.explain does) or choose colour (callers do,
with term.common.use_color). Every model character reaches the terminal through `glyph` (the
tokenizer's visible stand-ins, a line break as ↵), names through errors.visible.
"""

from __future__ import annotations

import numpy as np

from sgpt_cli.errors import SgptError, visible
from sgpt_cli.infer.tokenizer import printable

NEXT_SHOWN = 10  # bars of the next character's distribution (--json has every character)
BAR_WIDTH = 30
STRONGEST = 3  # characters named after each head's line
LENS_COLUMN = 11  # "embedding", "layer 12"
PLAIN_LEGEND = "(digits under the characters: the weight in tenths, 9 = 0.9 or more; '.' under 0.1)"


def glyph(char: str) -> str:
    """One model character as one visible cell: a line break as ↵, a tab as →, controls as pictures."""
    return {"\n": "↵", "\t": "→"}.get(char, printable(char))


def label(char: str) -> str:
    """A character named on its own (a bar's label, the strongest three): a space as ␣."""
    return "␣" if char == " " else glyph(char)


def cut(weights: np.ndarray, width: int) -> tuple[int, int]:
    """(start, end) of the `width` characters of the window that hold the most weight (the whole
    window when it fits); ties go to the later span, nearest the explained character."""
    n = len(weights)
    if n <= width:
        return 0, n
    sums = np.convolve(weights, np.ones(width), mode="valid")  # sums[s] = weight of [s, s + width)
    start = int(len(sums) - 1 - np.argmax(sums[::-1]))
    return start, start + width


def strongest(e, weights: np.ndarray) -> list[tuple[str, float, int]]:
    """(character, weight, position) of the head's STRONGEST characters."""
    order = np.argsort(-weights, kind="stable")[:STRONGEST]
    return [(e.text[i], float(weights[i]), e.first + int(i)) for i in order]


def digit(w: float) -> str:
    d = min(9, int(w * 10))
    return "." if d == 0 else str(d)


def header(e, model_name: str) -> list[str]:
    lines = [f"explaining position {e.at} ({label(e.text[-1])}) of {e.length} characters the model knows, "
             f"with {visible(model_name)}"]
    if e.first > 0:
        lines.append(f"the prompt is longer than the window: the model sees characters {e.first} to {e.at} "
                     f"({len(e.text)}), which are explained")
    if e.dropped:
        lines.append(f"{e.dropped} character{'s' * (e.dropped != 1)} of the prompt the model does not know "
                     "left out (as sgpt complete leaves them)")
    return lines


def next_lines(e, bar_chars: str = "█") -> list[str]:
    out = ["next character (the model's distribution, likeliest first)"]
    order = np.argsort(-e.probs, kind="stable")
    for i in order[:NEXT_SHOWN]:
        p = float(e.probs[i])
        out.append(f"  {label(e.vocab[i]):2} {p * 100:6.2f}% {bar_chars * max(0, round(p * BAR_WIDTH))}")
    rest = float(e.probs[order[NEXT_SHOWN:]].sum())
    if len(order) > NEXT_SHOWN:
        out.append(f"  ... {len(order) - NEXT_SHOWN} more characters, {rest * 100:.2f}% together")
    return out


def lens_lines(e) -> list[str]:
    out = ["logit lens (what the model would predict if it stopped here: final norm and head on the residual)"]
    for j, probs in enumerate(e.lens):
        name = "embedding" if j == 0 else f"layer {j}"
        tops = "   ".join(f"{label(c)} {p * 100:5.1f}%" for c, p in e.top(probs, 3))
        out.append(f"  {name:<{LENS_COLUMN}}{tops}")
    return out


def head_name(e, h: int) -> str:
    grouped = len(set(e.kv_heads)) < len(e.kv_heads)
    return f"head {h + 1}" + (f" kv {e.kv_heads[h] + 1}" if grouped else "")


def _three(e, weights) -> str:
    return "  ".join(f"{label(c)} {w:.2f} @{p}" for c, w, p in strongest(e, weights))


def attention_plain(e, layers: list[int], heads: list[int], width: int) -> list[str]:
    """Each head: the window's text (cut to `width`), the digits of its weights under it, and its
    strongest three."""
    name_w = max(len(head_name(e, h)) for h in heads) + 2
    room = max(8, width - name_w - 2)
    out = [f"attention of {label(e.text[-1])} (position {e.at}) over its window, by layer and head",
           "  " + PLAIN_LEGEND]
    for i in layers:
        out.append(f"layer {i + 1}")
        for h in heads:
            w = e.attention[i, h]
            a, b = cut(w, room)
            text = "".join(glyph(c) for c in e.text[a:b])
            pad = " " * name_w
            out.append(f"  {head_name(e, h):<{name_w}}{text}")
            out.append(f"  {pad}{''.join(digit(x) for x in w[a:b])}")
            out.append(f"  {pad}strongest: {_three(e, w)}" + (f"   (characters {e.first + a}-{e.first + b - 1})"
                                                                if b - a < len(w) else ""))
    return out


def render_plain(e, model_name: str, layers: list[int], heads: list[int], width: int = 80) -> str:
    parts = [header(e, model_name), next_lines(e, "#"), lens_lines(e), attention_plain(e, layers, heads, width)]
    return "\n\n".join("\n".join(line.rstrip() for line in p) for p in parts) + "\n"


def shade(weight: float):
    """A background for a weight: dark to bright orange (square root: small weights still show)."""
    from rich.color import Color
    from rich.style import Style

    s = float(np.sqrt(max(0.0, min(1.0, weight))))
    bg = Color.from_rgb(40 + int(215 * s), 40 + int(110 * s), 40 - int(40 * s))
    return Style(bgcolor=bg, color="black" if s > 0.6 else "white")


def attention_rich(e, layers: list[int], heads: list[int], width: int) -> list:
    from rich.text import Text

    name_w = max(len(head_name(e, h)) for h in heads) + 2
    three_w = 3 * 13
    room = max(8, width - name_w - three_w - 4)
    out = [Text(f"attention of {label(e.text[-1])} (position {e.at}) over its window, by layer and head "
                "(brighter: more weight)", style="bold")]
    for i in layers:
        out.append(Text(f"layer {i + 1}", style="bold"))
        for h in heads:
            w = e.attention[i, h]
            a, b = cut(w, room)
            line = Text(f"  {head_name(e, h):<{name_w}}")
            line.append("…" if a > 0 else " ")
            for c, x in zip(e.text[a:b], w[a:b]):
                line.append(glyph(c), style=shade(float(x)))
            line.append("…" if b < len(w) else " ")
            line.append("  " + _three(e, w), style="dim")
            out.append(line)
    return out


def render_rich(console, e, model_name: str, layers: list[int], heads: list[int]) -> None:
    from rich.text import Text

    width = console.size.width
    bold = lambda lines: [Text(lines[0], style="bold")] + [Text(x) for x in lines[1:]]  # noqa: E731
    blocks = [[Text(x) for x in header(e, model_name)], bold(next_lines(e)), bold(lens_lines(e)),
              attention_rich(e, layers, heads, width)]
    for k, block in enumerate(blocks):
        if k:
            console.print()
        for line in block:
            console.print(line, overflow="crop", no_wrap=True, soft_wrap=False)


def picked(count: int, chosen: int | None, what: str, flag: str) -> list[int]:
    """0-based indices for a 1-based `chosen` (None: all); UsageError outside 1..count."""
    from sgpt_cli.errors import UsageError

    if chosen is None:
        return list(range(count))
    if not 1 <= chosen <= count:
        raise UsageError(f"{flag} {chosen} is out of range: this model has {count} {what}{'s' * (count != 1)} "
                         f"(use 1 to {count})")
    return [chosen - 1]


def require_matplotlib():
    """matplotlib (the `train` extra: tens of MB, kept out of the runtime install), or one line saying
    how to install it."""
    try:
        import matplotlib
    except ImportError:
        from sgpt_cli.term.common import install_line

        raise SgptError(f"--image needs matplotlib, which is not installed: it comes with the training extra; "
                        f"install it with {install_line('train')}") from None
    return matplotlib


def save_image(e, path, title: str) -> None:
    """The attention maps of the whole window (layers x heads, query x key, the characters on the
    axes) as a PNG, written through files.atomic_path. Needs matplotlib (the `train` extra)."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgpt_cli.files import atomic_path

    maps = e.maps
    L, H, W = maps.shape[0], maps.shape[1], maps.shape[2]
    cell = max(2.0, min(4.0, W / 12))
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1, cell * L + 1), squeeze=False)
    ticks = list(range(W)) if W <= 48 else list(range(0, W, max(1, W // 24)))
    names = [glyph(c).replace("$", r"\$") for c in e.text]
    for i in range(L):
        for h in range(H):
            ax = axes[i][h]
            ax.imshow(np.sqrt(maps[i, h]), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {i + 1}, {head_name(e, h)}", fontsize=9)
            ax.set_xticks(ticks, [names[t] for t in ticks], fontsize=6, family="monospace")
            ax.set_yticks(ticks, [names[t] for t in ticks], fontsize=6, family="monospace")
            ax.tick_params(length=0)
    fig.suptitle(f"{title}: attention weights (rows: queries, columns: keys; brightness: square root of the weight)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path, "--image") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
