"""`POST /v1/explain` of `sgpt serve`: `sgpt explain --json`'s object through the openai client's
`post`, with the other endpoints' checks and error objects; the server runs with torch blocked."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from test_serve import server  # noqa: E402,F401  (the module's torch-free server fixture)


@pytest.fixture(scope="module")
def client(server):  # noqa: F811
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_explain_endpoint_returns_the_json_of_sgpt_explain(client, tiny_onnx):
    from sgpt_cli.infer.explain import explain
    from sgpt_cli.infer.onnx_model import OnnxModel

    got = client.post("/explain", body={"prompt": "ROMEO:\nBut", "at": 5, "layer": 2}, cast_to=object)
    assert got["object"] == "sgpt.explanation" and got["model"] == "tiny" and got["at"] == 5
    assert [layer["layer"] for layer in got["attention"]] == [2]
    want = explain(OnnxModel(tiny_onnx, device="cpu"), "ROMEO:\nBut", at=5).to_json([1])
    for a, b in zip(got["attention"][0]["heads"], want["attention"][0]["heads"]):
        np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-6)
    assert [x["char"] for x in got["next"]] == [x["char"] for x in want["next"]]


@pytest.mark.parametrize("body, param, code", [
    ({}, "prompt", "missing_field"), ({"prompt": 7}, "prompt", "invalid_type"),
    ({"prompt": ""}, "prompt", "invalid_value"), ({"prompt": "ROMEO", "at": 9}, "at", "invalid_value"),
    ({"prompt": "ROMEO", "head": 3}, "head", "invalid_value"), ({"prompt": "ROMEO", "at": "1"}, "at", "invalid_type"),
    ({"prompt": "ROMEO", "temperature": 1}, "temperature", "unknown_field"),
    ({"prompt": "x" * 70_000}, "prompt", "prompt_too_long"),
])
def test_bad_requests_get_the_openai_error_object(client, body, param, code):
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/explain", body=body, cast_to=object)
    error = info.value.body if "message" in info.value.body else info.value.body["error"]
    assert (error["param"], error["code"]) == (param, code) and "\n" not in error["message"]


def test_another_model_name_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.post("/explain", body={"prompt": "ROMEO", "model": "gpt-4"}, cast_to=object)
