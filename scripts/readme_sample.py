"""The README's sample text: check it against the shipped model, or write it afresh.

    python scripts/readme_sample.py           # rewrite the README's sample block from a fresh run
    python scripts/readme_sample.py --check   # exit 1 (and show both) when they differ
    python scripts/readme_sample.py --force   # write it on a CPU of another int8 class (then set SAMPLE_KERNEL)

The README shows a sample under the line "A sample (`sgpt complete ...`):", in the fenced block
that follows; the command in the backticks is run as printed, with the shipped model (no
$SGPT_MODEL, from an empty folder), and its output is the block. tests/test_readme.py runs the same
comparison, so re-exporting the shipped model (which changes every seeded text) needs this script
run once, and the new block committed with the new model.

What it does not do: touch anything but README.md's sample block (written atomically).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# ONNX Runtime's int8 products differ between instruction sets (without VNNI, AVX2's VPMADDUBSW
# saturates pairs of u8 x s8 products at int16), so a seeded sample of the int8 shipped model holds
# only on CPUs of the class that wrote it: the README's was written on one with VNNI.
SAMPLE_KERNEL = "vnni"
SAMPLE = re.compile(r"^A sample \(`(sgpt complete [^`]+)`\):\n\n```\n(.*?)\n```$", re.M | re.S)


def find_sample(text: str) -> tuple[str, str, tuple[int, int]]:
    """(command, the block's text, the block's span in `text`)."""
    match = SAMPLE.search(text)
    if match is None:
        raise SystemExit("README.md has no 'A sample (`sgpt complete ...`):' line followed by a fenced block")
    return match.group(1), match.group(2), match.span(2)


def int8_kernel() -> str:
    """'vnni' where the CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX int8), else 'no-vnni'."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split())
    except OSError:
        return "unknown"
    return "vnni" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "no-vnni"


def generate(command: str) -> str:
    """What `command` writes, run as printed with the shipped model (no $SGPT_MODEL, no ./models)."""
    argv = shlex.split(command)
    assert argv[:2] == ["sgpt", "complete"], command
    env = dict(os.environ)
    env.pop("SGPT_MODEL", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run([sys.executable, "-m", "sgpt_cli", *argv[1:]], capture_output=True, text=True,
                              cwd=empty, env=env, stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"`{command}` failed: {proc.stderr.strip()}")
    return proc.stdout.rstrip()  # a fenced block keeps no trailing blank lines


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    command, block, (start, end) = find_sample(text)
    fresh = generate(command)
    if int8_kernel() != SAMPLE_KERNEL:
        print(f"this CPU's int8 kernel is {int8_kernel()}, the sample's {SAMPLE_KERNEL}: run this on a CPU "
              "of the sample's class (or set SAMPLE_KERNEL to this one when rewriting)", file=sys.stderr)
        if "--check" in argv or "--force" not in argv:
            return 2
    if "--check" in argv:
        if fresh == block:
            return 0
        print(f"README's sample differs from `{command}`:\n--- README\n{block}\n--- now\n{fresh}")
        return 1
    if fresh != block:
        sys.path.insert(0, str(REPO))
        from sgpt_cli.files import atomic_write_text

        atomic_write_text(README, text[:start] + fresh + text[end:], "README.md")
        print(f"README.md: the sample is now what `{command}` writes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
