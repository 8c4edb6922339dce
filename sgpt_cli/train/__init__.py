"""Training and export: PyTorch, onnx and matplotlib (the `train` extra)."""
