"""The sgpt ONNX interface, declared once: the names of a model file's inputs and outputs and of
their axes (docs/onnx-interface.md describes them for users of the file).

What it holds: names and the functions that list the per-layer cache names. What it does not do:
import onnx, onnxruntime, numpy or torch; the exporter writes these names, the engine and
sgpt_cli.infer.onnx_model feed and read them.
"""

from __future__ import annotations

FORMAT = "2"  # metadata sgpt.format of the files this sgpt writes and reads
KV_HEADS_KEY = "sgpt.n_kv_head"  # key/value heads (grouped-query attention); absent = n_head (files before it)
INPUT_IDS = "input_ids"  # (batch, sequence) int64 character ids
POSITION_IDS = "position_ids"  # (batch, sequence) int64 absolute positions, consecutive within a row
LOGITS = "logits"  # (batch, sequence, vocab) float32
PAST = "past_key_values"  # past_key_values.{layer}.key / .value: (batch, slots, n_kv_head * head_dim), the ring
SLOTS = "slots"  # the cache's ring axis: any length from 1 to block_size (block_size: the whole window)
PRESENT = "present"  # present.{layer}.key / .value: the same shape, the ring with the fed positions written
KV = ("key", "value")


def past_names(n_layer: int) -> list[str]:
    """[past_key_values.0.key, past_key_values.0.value, past_key_values.1.key, ...]"""
    return [f"{PAST}.{i}.{kv}" for i in range(n_layer) for kv in KV]


def present_names(n_layer: int) -> list[str]:
    """[present.0.key, present.0.value, present.1.key, ...], in the order of past_names."""
    return [f"{PRESENT}.{i}.{kv}" for i in range(n_layer) for kv in KV]
