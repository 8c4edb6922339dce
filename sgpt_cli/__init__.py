"""sgpt: a character-level GPT trained on Shakespeare, exported to ONNX, spoken to from the terminal."""

__version__ = "0.1.0"
