"""`sgpt explain`'s numbers are PyTorch's: attention weights and the logit lens that ONNX Runtime
computes from the exported file's own graph (sgpt_cli.infer.explain) against the GPT it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgpt_cli.errors import SgptError
from sgpt_cli.infer.explain import ExplainModel, explain, explain_graph
from sgpt_cli.infer.onnx_model import OnnxModel
from sgpt_cli.train.explain_check import TOLERANCE, reference
from sgpt_cli.train.onnx_export import load_model

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


@pytest.fixture(scope="module", params=["tiny", "grouped"])
def pair(request, tiny_ckpt, tiny_onnx, wide_onnx, one_torch_thread):
    """(GPT, OnnxModel): the trained tiny model (a key/value head per query head) and the random
    one with grouped-query heads (4 query heads over 2 key/value heads)."""
    ckpt, path = (tiny_ckpt, tiny_onnx) if request.param == "tiny" else (wide_onnx.with_suffix(".pt"), wide_onnx)
    model, _ = load_model(ckpt)
    return model, OnnxModel(path, device="cpu")


def test_attention_rows_equal_pytorch_softmax_for_every_layer_and_head(pair):
    model, onnx_model = pair
    ids = torch.tensor(onnx_model.tokenizer.encode(PROMPT * 3)[: model.cfg.block_size])
    _, attention, _ = ExplainModel(onnx_model).run(ids.numpy())
    want, _ = reference(model, ids)
    assert len(attention) == model.cfg.n_layer
    for got, expected in zip(attention, want):
        assert got.shape == (model.cfg.n_head, len(ids), len(ids))
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=TOLERANCE)
        assert not np.triu(got, 1).any()  # nothing on positions after the query


def test_lens_of_every_layer_equals_pytorch_and_the_last_equals_the_logits(pair):
    model, onnx_model = pair
    ids = onnx_model.tokenizer.encode(PROMPT)[: model.cfg.block_size]
    logits, _, lenses = ExplainModel(onnx_model).run(ids)
    _, want = reference(model, torch.tensor(ids))
    assert len(lenses) == model.cfg.n_layer + 1
    for got, expected in zip(lenses, want):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.array_equal(lenses[-1], logits)
    np.testing.assert_allclose(logits, onnx_model.forward(ids[None])[0][0], atol=1e-5, rtol=0)


def test_explanation_of_one_position_names_its_window_heads_and_distribution(pair):
    model, onnx_model = pair
    e = explain(onnx_model, PROMPT, at=5)
    assert (e.first, e.at, e.text) == (0, 5, PROMPT[:6])
    assert e.attention.shape == (model.cfg.n_layer, model.cfg.n_head, 6)
    np.testing.assert_allclose(e.attention.sum(-1), 1.0, atol=TOLERANCE)
    assert abs(e.probs.sum() - 1) < 1e-9 and np.allclose(e.lens.sum(-1), 1)
    group = model.cfg.n_head // model.cfg.kv_heads
    assert e.kv_heads == [h // group for h in range(model.cfg.n_head)]
    obj = e.to_json()
    assert obj["window"]["positions"] == list(range(6)) and obj["window"]["characters"] == list(PROMPT[:6])
    assert [x["prob"] for x in obj["next"]] == sorted((x["prob"] for x in obj["next"]), reverse=True)
    assert len(obj["lens"]) == model.cfg.n_layer + 1 and len(obj["attention"][0]["heads"]) == model.cfg.n_head


def test_a_prompt_longer_than_the_window_is_explained_over_the_window_ending_at_the_position(pair):
    model, onnx_model = pair
    W = model.cfg.block_size
    text = (PROMPT * (2 * W // len(PROMPT) + 2))[: 2 * W]
    e = explain(onnx_model, text)
    assert (e.first, e.at, e.length) == (W, 2 * W - 1, 2 * W) and e.text == text[W:]
    inside = explain(onnx_model, text, at=W // 2)
    assert (inside.first, inside.at) == (0, W // 2)


@pytest.mark.parametrize("text, at, says", [
    ("", -1, "empty"), ("\x00\x01", -1, "no character the model knows"),
    ("ROMEO:", 6, "outside the prompt"), ("ROMEO:", -7, "outside the prompt")])
def test_a_prompt_or_position_the_model_cannot_see_is_one_clear_error(tiny_onnx, text, at, says):
    with pytest.raises(SgptError, match=says):
        explain(OnnxModel(tiny_onnx, device="cpu"), text, at=at)


def test_a_graph_that_is_not_sgpts_decoder_is_refused_in_one_line(tiny_onnx, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_onnx))
    attention = next(n for n in proto.graph.node if n.op_type == "Attention")
    attention.attribute.append(onnx.helper.make_attribute("qk_matmul_output_mode", 1))
    with pytest.raises(SgptError, match="already choose"):
        explain_graph(proto.SerializeToString(), int(OnnxModel(tiny_onnx, device="cpu").n_layer))
    proto.graph.node.remove(attention)
    edited = tmp_path / "edited.onnx"
    edited.write_bytes(proto.SerializeToString())
    with pytest.raises(SgptError, match=r"1 Attention nodes .* has 2"):
        explain_graph(edited.read_bytes(), 2)


def test_the_explain_graph_passes_onnx_checker_and_leaves_the_file_untouched(tiny_onnx):
    import onnx

    before = tiny_onnx.read_bytes()
    graph = explain_graph(before, OnnxModel(tiny_onnx, device="cpu").n_layer)
    onnx.checker.check_model(onnx.load_from_string(graph))
    assert tiny_onnx.read_bytes() == before


def test_export_verifies_the_explain_outputs_against_pytorch(pair):
    from sgpt_cli.train.onnx_export import verify

    model, onnx_model = pair
    report = verify(model, onnx_model.path)
    assert report["explain_attention_diff"] <= TOLERANCE and report["explain_row_sum_diff"] <= TOLERANCE
    assert report["explain_later_weight"] == 0 and report["explain_last_lens_diff"] == 0


def test_every_model_option_explains_as_pytorch_computes(tmp_path, text_file, one_torch_thread):
    """QK-norm (RMSNormalization in each layer), a ReLU-squared MLP, a head of its own and capped logits:
    export (which checks the explain graph against PyTorch) passes, and the lens follows the cap."""
    import dataclasses

    from sgpt_cli.config import ModelConfig, TrainConfig
    from sgpt_cli.infer.tokenizer import CharTokenizer
    from sgpt_cli.train import checkpoint
    from sgpt_cli.train.onnx_export import export
    from sgpt_cli.train.model import GPT

    torch.manual_seed(1)
    chars = sorted(set(text_file.read_text(encoding="utf-8")))
    cfg = ModelConfig(vocab_size=len(chars), block_size=24, n_layer=2, n_head=4, n_embd=32, n_kv_head=1,
                      mlp="relu2", tied_head=False, qk_norm=True, logit_cap=3.0)
    model = GPT(cfg)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # a zero head would make every lens uniform
    checkpoint.save(tmp_path / "m.pt", {
        "model": model.state_dict(), "model_config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(TrainConfig()), "vocab": CharTokenizer(chars).to_json(),
        "iter": 0, "val_loss": None, "data_sha256": "", "train_seconds": 0.0, "hardware": "random weights"})
    report = export(tmp_path / "m.pt", tmp_path / "m.onnx")
    assert report["explain_attention_diff"] <= TOLERANCE and report["explain_last_lens_diff"] == 0
    e = explain(OnnxModel(tmp_path / "m.onnx", device="cpu"), PROMPT[:20])
    assert e.attention.shape == (2, 4, 20) and e.kv_heads == [0, 0, 0, 0]
