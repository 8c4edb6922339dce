"""`POST /v1/explain`: sgpt's own endpoint (not OpenAI's), `sgpt explain --json`'s object for one
position of a prompt.

Body: `prompt` (a string, required), `at` (the character to explain, from 0; negative from the end;
default -1), `layer`, `head` (counted from 1: only that layer's or head's attention; default all),
`model` (optional, as the other endpoints check it). The same limits as the others (--max-body,
--max-prompt-chars) and the same error objects (OpenAI's `{"error": {...}}`, 400 for a bad field).
The explain graph (sgpt_cli.infer.explain) is opened on the first request and kept; a request runs in
a worker thread, beside the engine's decode steps, never in the event loop.

What it does not do: touch the engine's rows or cache (it has its own session and a cache of its own
per request).
"""

from __future__ import annotations

import threading

from sgpt_cli.errors import SgptError
from sgpt_cli.web.openai_api import ApiError, bad, check_model

FIELDS = {"model", "prompt", "at", "layer", "head"}
_LOCK = threading.Lock()  # one explain graph per server, opened once


def _integer(body: dict, name: str, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer (got {value!r:.40})", name, "invalid_type")
    return value


def _selected(value: int | None, count: int, name: str) -> list[int]:
    if value is None:
        return list(range(count))
    if not 1 <= value <= count:
        raise bad(f"{name} {value} is out of range: this model has {count} {name}s (1 to {count})", name)
    return [value - 1]


def explain_body(state, body: dict) -> dict:
    """The checked request -> the explanation's JSON object (runs in a worker thread)."""
    from sgpt_cli.infer.explain import ExplainModel, explain

    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r:.60}; /v1/explain takes {', '.join(sorted(FIELDS))}", unknown[0],
                  "unknown_field")
    check_model(body, state.model_id)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("prompt is required: the text to explain", "prompt", "missing_field")
    if not isinstance(prompt, str):
        raise bad("prompt must be a string", "prompt", "invalid_type")
    if len(prompt) > state.limits.max_prompt_chars:
        raise bad(f"a prompt of {len(prompt):,} characters is longer than this server takes "
                  f"({state.limits.max_prompt_chars:,}, --max-prompt-chars)", "prompt", "prompt_too_long")
    model = state.engine.model
    at = _integer(body, "at", -1)
    layers = _selected(_integer(body, "layer", None), model.n_layer, "layer")
    heads = _selected(_integer(body, "head", None), model.n_head, "head")
    with _LOCK:
        explainer = getattr(state, "explainer", None)
        if explainer is None:
            try:
                explainer = state.explainer = ExplainModel(model)
            except SgptError as exc:
                raise ApiError(500, str(exc), code="not_explainable", kind="server_error") from None
    try:
        e = explain(model, prompt, at, explainer=explainer)
    except SgptError as exc:  # an empty prompt, no known character, `at` outside it
        param = "at" if "--at" in str(exc) else "prompt"
        raise bad(str(exc).replace("--at", "at"), param) from None
    return {"model": state.model_id, **e.to_json(layers, heads)}


def explain_route(state):
    """The Starlette route of POST /v1/explain over the server's `state`."""
    from starlette.concurrency import run_in_threadpool
    from sgpt_cli.web.limits import JSONResponse
    from starlette.routing import Route

    from sgpt_cli.web.server import read_json

    async def explain_endpoint(request):
        body = await read_json(request, state.max_body)
        return JSONResponse(await run_in_threadpool(explain_body, state, body))

    return Route("/v1/explain", explain_endpoint, methods=["POST"])
