"""The inference path: ONNX Runtime + numpy, never torch (tests/test_no_torch.py walks this folder)."""
