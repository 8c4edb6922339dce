"""The sgpt ONNX interface, declared once: the names of a model file's inputs and outputs and of
their axes (docs/onnx-interface.md describes them for users of the file).

What it holds: names and the functions that list the per-layer cache names. What it does not do:
import onnx, onnxruntime, numpy or torch; the exporter writes these names, the engine and
sgpt_cli.onnx_model feed and read them.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"  # (batch, sequence) int64 character ids
POSITION_IDS = "position_ids"  # (batch, sequence) int64 absolute positions
ATTENTION_MASK = "attention_mask"  # (batch, past_sequence + sequence) int64, 1 real, 0 padding; optional
LOGITS = "logits"  # (batch, sequence, vocab) float32
PAST = "past_key_values"  # past_key_values.{layer}.key / .value: (batch, n_head, past_sequence, head_dim)
PRESENT = "present"  # present.{layer}.key / .value: (batch, n_head, past_sequence + sequence, head_dim)
KV = ("key", "value")

# the named axes: dimension index -> name, per tensor kind
AXES = {INPUT_IDS: {0: "batch", 1: "sequence"}, POSITION_IDS: {0: "batch", 1: "sequence"},
        ATTENTION_MASK: {0: "batch", 1: "past_sequence + sequence"},
        LOGITS: {0: "batch", 1: "sequence"}, PAST: {0: "batch", 2: "past_sequence"}, PRESENT: {0: "batch"}}


def past_names(n_layer: int) -> list[str]:
    """[past_key_values.0.key, past_key_values.0.value, past_key_values.1.key, ...]"""
    return [f"{PAST}.{i}.{kv}" for i in range(n_layer) for kv in KV]


def present_names(n_layer: int) -> list[str]:
    """[present.0.key, present.0.value, present.1.key, ...], in the order of past_names."""
    return [f"{PRESENT}.{i}.{kv}" for i in range(n_layer) for kv in KV]


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of an exported graph, in the exporter's order."""
    return [INPUT_IDS, POSITION_IDS, ATTENTION_MASK, *past_names(n_layer)], [LOGITS, *present_names(n_layer)]
