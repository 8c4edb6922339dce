"""The one JSON writer for everything sgpt prints or writes as JSON (`complete --json`, `--batch`,
`--num-samples --json`, `eval --json`, the server's stream chunks): `dumps`.

Why one: a JSON string may hold any character, and `json.dumps(ensure_ascii=False)` writes C1 controls
(U+009B is a CSI to many terminals), bidirectional overrides (U+202E), zero-width characters and lone
surrogates as they are, so a hostile file name or model text printed with `--json` to a terminal could
steer or hide what it shows. JSON can spell each of them as a \\uXXXX escape, which every strict reader
reads back to the same text; everything else stays readable UTF-8.

What it does not do: import anything beyond the standard library (the inference path reads it).
"""

from __future__ import annotations

import json
import re

# characters json.dumps(ensure_ascii=False) writes as they are that a terminal could obey or hide
# (C1 controls such as U+009B CSI, format controls such as U+202E, U+2028/9, lone surrogates):
# JSON can spell every one of them as an escape, which any strict reader reads back
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                             "\ufeff\ufff9-\ufffb\ud800-\udfff]")


def escaped(text: str) -> str:
    """JSON text with every character a terminal would obey (and every lone surrogate) as \\uXXXX."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(value) -> str:
    """`value` as one line of strict JSON: no NaN or Infinity (ValueError: strict readers refuse them),
    and no character a terminal would obey written raw (escaped as \\uXXXX)."""
    return escaped(json.dumps(value, ensure_ascii=False, allow_nan=False))


def unreadable_why(exc: ValueError) -> str:
    """Why json.loads refused a text when it is not a decoding error: a number past Python's
    int-digit limit (whose own message advises a Python call, nothing a writer of JSON can do), or
    what the reader said (a constant such as NaN where it refuses them)."""
    import sys

    if "integer string conversion" in str(exc):
        return f"a number has more than {sys.get_int_max_str_digits():,} digits"
    return str(exc)
