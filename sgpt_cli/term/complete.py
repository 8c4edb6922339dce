"""`sgpt complete`: the Typer face of sgpt_cli.infer.complete, for --help and usage errors.

The flags are `sgpt_cli.infer.complete.OPTIONS` (declared in sgpt_cli.settings), the list the fast
(Typer-free) path parses too; `typer_command` builds the command from it. The worker
(`sgpt_cli.infer.complete.run`) checks the values, as it does on the fast path.
"""

from __future__ import annotations

from sgpt_cli.term.common import typer_command
from sgpt_cli.infer.complete import OPTIONS, PROMPT_HELP
from sgpt_cli.settings import Setting

PROMPT = Setting("prompt", (), str, None, PROMPT_HELP, metavar="PROMPT")

DOC = """Continue a text: the prompt is stdin, then PROMPT; the continuation streams to stdout.

\b
printf 'ROMEO:' | sgpt complete -n 200
sgpt complete --seed 7 --stop '\\n\\n' 'JULIET:'
cat scene.txt | sgpt complete --json -n 100 'HAMLET:' | jq -r .text
"""


def _run(**values) -> int:
    from sgpt_cli.infer.complete import run

    return run(values)


complete = typer_command("complete", DOC, (PROMPT,) + OPTIONS, _run, check=False)
