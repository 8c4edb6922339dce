"""docs/how-it-works.md's outputs and picture: check them against the shipped model, or write them afresh.

    python scripts/how_it_works.py           # rerun every command of the page, rewrite its outputs and the picture
    python scripts/how_it_works.py --check   # exit 1 (and show both) when an output differs

Every ```console block of the page holds commands (lines starting with `$ `), each followed by its
output. A command is run by bash, as printed, from an empty folder with the shipped model (no
$SGPT_MODEL), `sgpt` being this checkout's, 100 columns wide (the plain view cuts to the width).
tests/test_how_it_works.py runs the same comparison (digits aside: ONNX Runtime's int8 kernels
differ between CPUs in the last bits). The picture, docs/how-it-works.png, is `sgpt explain --image`
of PICTURE_PROMPT.

What it does not do: touch anything but the page's console blocks and the picture (both written atomically).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "how-it-works.md"
PICTURE = REPO / "docs" / "how-it-works.png"
PICTURE_PROMPT = "ROMEO:\nBut soft, what light"
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.M | re.S)
COLUMNS = 100


def blocks(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(the block's text, its span in `text`) for every console block."""
    return [(m.group(1), m.span(1)) for m in BLOCK.finditer(text)]


def commands(block: str) -> list[tuple[str, str]]:
    """(command, the output printed under it) for every `$ ` line of a block."""
    out, command, lines = [], None, []
    for line in block.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            if command is not None:
                out.append((command, "\n".join(lines)))
            command, lines = line[2:], []
        else:
            lines.append(line)
    if command is not None:
        out.append((command, "\n".join(lines)))
    return out


def run(command: str, cwd: str | None = None) -> str:
    """What `command` writes (stdout), run by bash with `sgpt` this checkout's and the shipped model."""
    env = dict(os.environ)
    env.pop("SGPT_MODEL", None)
    env.pop("NO_COLOR", None)
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), COLUMNS=str(COLUMNS),
               SGPT_PYTHON=sys.executable)
    shim = 'sgpt() { "$SGPT_PYTHON" -m sgpt_cli "$@"; }; '
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run(["bash", "-c", shim + command], capture_output=True, text=True, cwd=cwd or empty,
                              env=env, stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"`{command}` failed: {proc.stderr.strip()}")
    return proc.stdout.rstrip("\n")


def fresh_block(block: str) -> str:
    parts = []
    for command, _ in commands(block):
        output = run(command)
        parts.append(f"$ {command}\n" + (output + "\n" if output else ""))
    return "".join(parts)


def main(argv: list[str]) -> int:
    text = PAGE.read_text(encoding="utf-8")
    found = blocks(text)
    if "--check" in argv:
        bad = 0
        for block, _ in found:
            for command, printed in commands(block):
                now = run(command)
                if now != printed:
                    bad += 1
                    print(f"`{command}` differs:\n--- page\n{printed}\n--- now\n{now}")
        return 1 if bad else 0
    from sgpt_cli.files import atomic_path

    for block, (start, end) in reversed(found):
        text = text[:start] + fresh_block(block) + text[end:]
    with atomic_path(PAGE) as tmp:
        tmp.write_text(text, encoding="utf-8")
    prompt = PICTURE_PROMPT.replace("\n", "\\n")
    run(f"printf '{prompt}' | sgpt explain --image {PICTURE} --json > /dev/null")
    print(f"rewrote {len(found)} blocks of {PAGE.relative_to(REPO)} and {PICTURE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
