"""`sgpt explain`: flags and output over sgpt_cli.infer.explain (torch-free: ONNX Runtime and numpy);
the views are sgpt_cli.term.explain_view's.

The prompt is read as `sgpt complete` reads it (stdin when it is not a terminal, then the argument).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sgpt_cli.settings import JSON, MODEL, Setting
from sgpt_cli.term.common import typer_command

PROMPT = Setting("prompt", (), str, None, "Text to explain, after whatever comes on stdin.", metavar="PROMPT")
OPTIONS = (
    PROMPT,
    MODEL,
    Setting("at", ("--at",), int, -1,  # the last character: what the model predicts next
            "The character to explain, counted from 0 (negative: from the end; -1 is the last).", metavar="N"),
    Setting("layer", ("--layer",), int, None, "Show this layer's attention only (counted from 1).",
            shown="every layer", low=1, metavar="L"),
    Setting("head", ("--head",), int, None, "Show this head's attention only (counted from 1).",
            shown="every head", low=1, metavar="H"),
    JSON.but(help="Print every number as one JSON object (distribution, lens, attention over the window)."),
    Setting("image", ("--image",), Path, None,
            "Also draw the attention maps of the whole window (layers x heads, query x key) into this PNG; "
            "needs matplotlib (the train extra).", shown="none", metavar="FILE.png"),
)

DOC = """Show what the model looked at and how its guess formed, for one position of a prompt.

The next character's distribution, the logit lens (the model's guess after each layer) and, for
every layer and head, the weight the position gave each character of its window. The numbers are
ONNX Runtime's, from the model file itself.

\b
sgpt explain 'ROMEO:'
sgpt explain --at 3 --layer 1 'To be, or not to be'
printf 'JULIET:\\nO Romeo' | sgpt explain --json | jq '.lens[].top[0]'
"""


def read_prompt(argument: str | None) -> str:
    """stdin (when it is not a terminal), then the argument, as `sgpt complete` joins them."""
    from sgpt_cli.infer.prompt import StreamedPrompt

    stdin = sys.stdin.buffer if sys.stdin is not None else None
    return "".join(StreamedPrompt(stdin, argument).pieces())


def _run(prompt, model, at, layer, head, as_json, image) -> int:
    from sgpt_cli.files import check_writable_target
    from sgpt_cli.infer.explain import ExplainModel, explain
    from sgpt_cli.infer.model_lookup import find_model
    from sgpt_cli.term.explain_view import picked

    path, _ = find_model(model)
    if image is not None:  # said before any work
        from sgpt_cli.term.explain_view import require_matplotlib

        check_writable_target(image, "--image")
        require_matplotlib()
    text = read_prompt(prompt)
    explainer = ExplainModel.open(path)  # the explain graph alone: the serving graph is never opened
    onnx_model = explainer.model
    if "\r" not in onnx_model.tokenizer.stoi:
        text = text.replace("\r\n", "\n")
    layers = picked(onnx_model.n_layer, layer, "layer", "--layer")
    heads = picked(onnx_model.n_head, head, "head", "--head")
    e = explain(onnx_model, text, at, maps=image is not None, explainer=explainer)
    if image is not None:
        from sgpt_cli.term.explain_view import save_image

        save_image(e, image, path.name)
    show(e, path.name, layers, heads, as_json)
    return 0


def show(e, model_name: str, layers: list[int], heads: list[int], as_json: bool = False, stream=None) -> None:
    """The explanation on `stream` (stdout): JSON, the colour view on a colour terminal, else plain."""
    from sgpt_cli.term.common import use_color
    from sgpt_cli.term.explain_view import render_plain

    stream = stream or sys.stdout
    if as_json:
        import json

        stream.write(json.dumps({"model": model_name, **e.to_json(layers, heads)}, ensure_ascii=False) + "\n")
    elif use_color(stream):
        from sgpt_cli.term.console import Console
        from sgpt_cli.term.explain_view import render_rich

        render_rich(Console(file=stream, highlight=False), e, model_name, layers, heads)
    else:
        import shutil

        stream.write(render_plain(e, model_name, layers, heads, shutil.get_terminal_size().columns))
    stream.flush()


def __getattr__(name: str):
    """`explain_cmd`, the Typer command, made when the app asks for it (the fast path never does)."""
    if name == "explain_cmd":
        return typer_command("explain", DOC, OPTIONS, _run)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _NotForUs(Exception):
    """argparse could not parse the arguments cleanly: Typer will, and will explain any mistake."""


def fast_main(argv: list[str]) -> int | None:
    """`sgpt explain` without Typer (about a tenth of a second of imports: the command's budget is
    half a second); None means: give these arguments to Typer (help, and every usage error's wording)."""
    import argparse

    from sgpt_cli.errors import SgptError
    from sgpt_cli.settings import FLAG, check_values
    from sgpt_cli.term.common import argparse_parser

    class Quiet(argparse.ArgumentParser):
        def error(self, message):
            raise _NotForUs(message)

    if any(a in ("-h", "--help") for a in argv):
        return None
    try:
        values = vars(argparse_parser(OPTIONS[1:], "sgpt explain", positional=("prompt",), parser_class=Quiet)
                      .parse_args(argv))
    except _NotForUs:
        return None
    from sgpt_cli.term.common import report

    try:
        return _run(**check_values(OPTIONS, values, FLAG, from_command_line=True))
    except (SgptError, KeyboardInterrupt, BrokenPipeError) as exc:
        return report(exc)
