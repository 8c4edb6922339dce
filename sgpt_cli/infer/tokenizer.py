"""Character-level tokenizer: the vocabulary is the sorted set of characters of the training text.

Saved as a JSON array of characters in id order (never pickle), both in checkpoints and in the ONNX
metadata (`sgpt.vocab`). No torch here: the inference path uses it.

What a model writes is shown through `shown`, not `chars`: a vocabulary may hold control characters
(ESC, BEL, a carriage return: a text with them, or an edited file), and no model output may reach a
terminal as a control sequence. Line breaks and tabs are text; every other C0 control becomes its
visible Unicode control picture (ESC -> U+241B), DEL U+2421, and C1 controls, format controls
(U+202E RIGHT-TO-LEFT OVERRIDE, zero-width characters) and the line/paragraph separators U+FFFD.
A vocabulary that holds something no text holds (a lone surrogate, a noncharacter) is refused when
it is read: it could never be written to a file (`/save`) or a UTF-8 stream.
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np

from sgpt_cli.errors import SgptError


class CharTokenizer:
    def __init__(self, chars: list[str]):
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise SgptError("the vocabulary is damaged: it must be a list of single characters")
        bad = next((c for c in chars if _not_text(c)), None)
        if bad is not None:  # checked when the file is opened, not when /save fails to encode it
            raise SgptError(f"the vocabulary is damaged: it holds U+{ord(bad):04X}, which is not a character "
                            "of any text (a lone surrogate or a noncharacter); re-export the model from a "
                            "checkpoint trained on UTF-8 text")
        if len(set(chars)) != len(chars):
            raise SgptError("the vocabulary is damaged: it repeats a character")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.shown = [printable(c) for c in self.chars]  # what generation writes for each id

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @classmethod
    def from_json(cls, data: str) -> "CharTokenizer":
        try:
            chars = json.loads(data)
        except (TypeError, ValueError):
            raise SgptError("the vocabulary is damaged: it is not a JSON array") from None
        except RecursionError:  # 100,000 nested brackets: the decoder's stack, from a hostile file
            raise SgptError("the vocabulary is damaged: it nests too deep to be a JSON array of characters") from None
        if not isinstance(chars, list):
            raise SgptError("the vocabulary is damaged: it is not a JSON array")
        return cls(chars)

    def to_json(self) -> str:
        return json.dumps(self.chars, ensure_ascii=False)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` the model has never seen, each once, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def encode(self, text: str, drop_unknown: bool = False) -> np.ndarray:
        """Ids as int64. Unknown characters raise, unless `drop_unknown` drops them."""
        if drop_unknown:
            ids = [self.stoi[c] for c in text if c in self.stoi]
        else:
            missing = self.unknown(text)
            if missing:
                raise SgptError(f"characters not in the vocabulary: {''.join(missing)!r}")
            ids = [self.stoi[c] for c in text]
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        """The text of `ids` as it may be shown on a terminal (control characters made visible)."""
        return "".join(self.shown[int(i)] for i in ids)


TEXT_CONTROLS = frozenset("\n\t")  # controls that are text: a model writes lines and indents
# invisible characters that change how a terminal shows what follows: format controls (U+202E
# RIGHT-TO-LEFT OVERRIDE reverses the rest of the line, zero-width ones hide text), the line and
# paragraph separators; shown as U+FFFD, as C1 controls are
_HIDDEN_CATEGORIES = frozenset(("Cf", "Zl", "Zp"))


def _not_text(char: str) -> bool:
    """A lone surrogate (UTF-8 cannot encode it) or a noncharacter (U+FDD0..U+FDEF, U+xFFFE/F)."""
    code = ord(char)
    return 0xD800 <= code < 0xE000 or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def printable(char: str) -> str:
    """`char`, or a visible stand-in when a terminal would obey it as a control."""
    code = ord(char)
    if char in TEXT_CONTROLS:
        return char
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: U+241B SYMBOL FOR ESCAPE, ...
    if code == 0x7F:
        return "\u2421"  # SYMBOL FOR DELETE
    if 0x80 <= code < 0xA0:
        return "\ufffd"  # C1 controls (CSI is 0x9B) have no pictures
    if code > 0xA0 and unicodedata.category(char) in _HIDDEN_CATEGORIES:
        return "\ufffd"  # format controls (bidirectional overrides, zero-width), U+2028, U+2029
    return char
