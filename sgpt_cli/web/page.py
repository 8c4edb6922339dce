"""The play page `sgpt serve` gives a browser at GET /, and the small endpoint it reads its settings from.

What it holds: `PAGE_FILES` (the page's static files inside the package, sgpt_cli/web/static/:
hand-written HTML, CSS and JavaScript, no build step, nothing fetched from elsewhere), `props`
(GET /v1/sgpt/props: the model's name, size and validation loss, the sampling settings the page
offers, each from its one declaration in sgpt_cli.settings (so the page never repeats a range or a
default), the REPL's heat bins, the server's limits), `is_public` (the paths a browser must reach
before it has the key: the page itself) and `routes`, the Starlette routes sgpt_cli.web.server adds.

Why plain files: the page installs with the `serve` extra and works offline; a user builds nothing;
the whole page is a few tens of kilobytes, read once at start.

What it does not do: generate (the page streams /v1/completions like any client), or import torch.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from sgpt_cli.web.openai_api import ApiError
from sgpt_cli.infer.chat_session import SPEECH_END
from sgpt_cli.web.limits import JSONResponse
from sgpt_cli.settings import CHAT_SETTINGS, SEED_DRAW, SERVE_STOPS, Setting, by_name

PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
PAGE_PREFIX = "/page/"
EXPLAIN = "/v1/explain"  # what each layer and head attended to, where the server has it
# what the page may load: its own files and its own server, nothing else (no inline script either)
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}
# the REPL's /set names the page offers, in its order (chat's settings: max_tokens 300, one_speech)
PAGE_SETTINGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_tokens", "stop",
                 "one_speech", "seed")


def is_public(path: str) -> bool:
    """The page's own files: a browser loads them before it can know the key (the page asks for it)."""
    return path == "/" or path.startswith(PAGE_PREFIX)


def _kind(s: Setting) -> str:
    if s.kind is bool:
        return "bool"
    if s.kind in (int, float):
        return s.kind.__name__
    return "text"


def setting_object(s: Setting) -> dict:
    """One declared setting as the page reads it: everything it needs to draw, check and explain it."""
    return {"name": s.name, "kind": _kind(s), "default": list(s.default) if s.repeat else s.default,
            "help": s.help, "rule": s.rule("name"), "low": s.low, "high": s.high, "above": s.above,
            "zero": s.zero, "none": s.none, "repeat": s.repeat, "most": s.most, "longest": s.longest}


def quantization(meta: dict) -> str:
    """How the file stores its weights, in the words `sgpt export --quantize` uses (none: float32)."""
    return meta.get("sgpt.quantization") if meta.get("sgpt.quantization") not in (None, "", "none") else "float32"


def heat_bins() -> list[dict]:
    """The heat bins (sgpt_cli.settings.HEAT, as the REPL draws them): the lowest probability, the colour's name, the legend."""
    from sgpt_cli.settings import HEAT

    return [{"low": low, "colour": colour, "words": words} for low, colour, words in HEAT]


def props(state) -> dict:
    model = state.engine.model
    limits = state.limits
    chat = by_name(CHAT_SETTINGS)
    settings = []
    for name in PAGE_SETTINGS:
        s = chat[name]
        if name == "max_tokens":
            s = s.but(high=limits.max_tokens_limit)
        if name == "stop":
            s = s.but(most=SERVE_STOPS)
        settings.append(setting_object(s))
    path = state.model_path
    return {
        "model": {"id": state.model_id, "file": path.name, "bytes": path.stat().st_size if path.exists() else None,
                  "val_loss": model.val_loss, "quantization": quantization(model.meta),
                  "block_size": model.block_size, "vocab_size": model.vocab_size, "n_layer": model.n_layer,
                  "n_head": model.n_head, "n_embd": model.n_embd, "device": model.device},
        "settings": settings,
        "heat": heat_bins(),
        "speech_end": SPEECH_END,
        "seed_draw": SEED_DRAW,  # a seed the page draws is below this, as the commands draw theirs
        "limits": {"max_n": limits.max_n, "max_tokens": limits.max_tokens_limit,
                   "max_prompt_chars": limits.max_prompt_chars},
    }


def _read(name: str) -> bytes:
    return resources.files("sgpt_cli.web").joinpath("static", name).read_bytes()


def routes(state) -> list[Route]:
    """GET / (the page), GET /page/FILE (its files) and GET /v1/sgpt/props."""
    files = {name: _read(name) for name in PAGE_FILES}  # read once: a few tens of kilobytes

    async def index(request: HttpRequest) -> Response:
        return Response(files["index.html"], media_type=PAGE_FILES["index.html"], headers=HEADERS)

    async def page_file(request: HttpRequest) -> Response:
        name = request.path_params["name"]
        if name not in files:
            raise ApiError(404, f"the page has no file {name!r}", code="not_found")
        return Response(files[name], media_type=PAGE_FILES[name], headers=HEADERS)

    async def page_props(request: HttpRequest) -> Response:
        out = props(state)
        # the attention panel asks only a server that has the endpoint (a 404 is a console error)
        out["explain"] = any(getattr(r, "path", None) == EXPLAIN for r in request.app.routes)
        return JSONResponse(out)

    return [Route("/", index), Route(PAGE_PREFIX + "{name}", page_file), Route("/v1/sgpt/props", page_props)]
