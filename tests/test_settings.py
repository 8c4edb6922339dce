"""The settings declared once (sgpt_cli.settings): every parser, the engine, chat's /set and JSONL
rows are built from the same declaration, and its ranges are enforced everywhere in one line."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer

from sgpt_cli.infer.chat_session import SETTING_NAMES, ChatSession, ChatSettings, set_completions
from sgpt_cli.term.app import build_app
from sgpt_cli.term.complete import OPTIONS, fast_parser
from sgpt_cli.errors import UsageError
from sgpt_cli.settings import (
    CHAT_SETTINGS, LOGPROBS, PARAMS, SAMPLING, SamplingParams, by_name, decode_escapes, sampling_params_from,
)


def command(name: str):
    return typer.main.get_command(build_app()).commands[name]


def test_every_sampling_setting_reaches_every_parser_with_its_default():
    fast = {a.dest: a for a in fast_parser()._actions}
    complete = {p.name: p for p in command("complete").params}
    chat = {p.name: p for p in command("chat").params}
    for s in SAMPLING:
        assert fast[s.name].option_strings == list(s.flags)
        assert tuple(complete[s.name].opts) == s.flags
        assert s.help in complete[s.name].help and "[default: " in complete[s.name].help
        if s.name != "stop":  # chat ends replies with --one-speech instead
            assert s.name in SETTING_NAMES and tuple(chat[s.name].opts) == s.flags
    assert [f.name for f in dataclasses.fields(SamplingParams)] == [s.name for s in PARAMS]
    assert PARAMS == SAMPLING + (LOGPROBS,)
    assert tuple(complete["logprobs"].opts) == ("--logprobs",) and fast["logprobs"].option_strings == ["--logprobs"]
    assert "logprobs" not in chat and "logprobs" not in SETTING_NAMES  # chat shows them as heat
    assert tuple(chat["heat"].opts) == ("--heat",) and "heat" in SETTING_NAMES
    assert [f.name for f in dataclasses.fields(ChatSettings)] == [s.name for s in CHAT_SETTINGS]
    assert chat["max_tokens"].default == ChatSettings().max_tokens == 300  # chat's own default, declared once


def test_typer_commands_are_built_from_the_declarations():
    for name in ("complete", "chat", "eval", "serve"):
        params = [p for p in command(name).params if p.name != "help"]
        for p in params:
            assert p.help and "[default: " in p.help or p.name == "prompt", (name, p.name)


def test_set_completes_from_the_declaration():
    assert set_completions("verbose") == ("on", "off")
    assert set_completions("top-k") == ("off",) and set_completions("seed") == ("random",)
    assert set_completions("temperature") == ()


@pytest.mark.parametrize("name, text, value", [
    ("temperature", "0", 0.0), ("temperature", "0.001", 0.001), ("temperature", "100", 100.0),
    ("top_k", "off", None), ("top_k", "none", None), ("seed", "random", "drawn"), ("seed", str(2**64 - 1), 2**64 - 1),
    ("top_p", "1", 1.0), ("repetition_penalty", "0.01", 0.01), ("one_speech", "no", False),
    ("min_p", "0", 0.0), ("min_p", "1", 1.0), ("min_p", "off", None),
])
def test_set_accepts_the_ends_of_each_range(name, text, value):
    session = ChatSession(None, 32)
    session.set(name, text)
    if value == "drawn":  # `/set seed random`: a fresh seed, shown, so the session can be repeated
        assert isinstance(session.settings.seed, int)
    else:
        assert getattr(session.settings, name) == value


@pytest.mark.parametrize("name, text", [
    ("temperature", "0.0009"), ("temperature", "100.5"), ("temperature", "1e-310"), ("temperature", "nan"),
    ("top_p", "0"), ("repetition_penalty", "0"), ("repetition_penalty", "101"), ("seed", str(2**64)),
    ("max_tokens", "2.5"),
])
def test_set_refuses_what_is_out_of_range_in_one_line(name, text):
    session = ChatSession(None, 32)
    with pytest.raises(UsageError, match=f"^{name} must be .*\\(got ") as info:
        session.set(name, text)
    assert "\n" not in str(info.value)


def test_rows_are_checked_with_the_same_declaration():
    params = sampling_params_from({"temperature": 0.5, "top_k": 5.0, "stop": ["\n\n"], "seed": 3})
    assert params == SamplingParams(temperature=0.5, top_k=5, stop=("\n\n",), seed=3)
    assert isinstance(params.top_k, int)
    assert sampling_params_from({}, defaults={"max_tokens": 300}).max_tokens == 300
    for row, words in [({"temperature": 1e-310}, "temperature must be 0 (greedy) or a number"),
                       ({"top_k": True}, "top_k must be"), ({"stop": "\n"}, "stop must be a list of strings"),
                       ({"stop": [""]}, "stop must be"), ({"max_tokens": "5"}, "max_tokens must be"),
                       ({"temprature": 1}, "unknown setting 'temprature'"), ({"seed": -1}, "seed must be")]:
        with pytest.raises(UsageError) as info:
            sampling_params_from(row)
        assert words in str(info.value) and not str(info.value).startswith("--"), (row, info.value)


def test_logprobs_is_declared_once_with_its_range_and_off_by_default():
    assert SamplingParams().logprobs is None
    assert SamplingParams(logprobs=20.0).logprobs == 20 and SamplingParams(logprobs=0).logprobs == 0
    for bad in (-1, 21, 2.5, True, "3"):
        with pytest.raises(UsageError, match="^--logprobs must be a whole number from 0 to 20"):
            SamplingParams(logprobs=bad)
    assert sampling_params_from({"logprobs": 5}).logprobs == 5
    with pytest.raises(UsageError, match="^logprobs must be a whole number from 0 to 20, or off"):
        sampling_params_from({"logprobs": 99})


def test_stop_escapes():
    assert decode_escapes(r"\n\n") == "\n\n"
    assert decode_escapes(r"a\tb\\n") == "a\tb\\n"  # \\ is one backslash, so \\n is not a line break
    assert decode_escapes(r"\x") == r"\x"  # other backslashes stay
    values = by_name(OPTIONS)["stop"].parse(r"END\n")
    assert values == ("END\n",)


def test_sampling_params_fields_are_the_declared_settings():
    """SamplingParams is written out as a plain dataclass (readable, editable); its fields, their
    types and their defaults are PARAMS' declarations, in order."""
    fields = dataclasses.fields(SamplingParams)
    assert [f.name for f in fields] == [s.name for s in PARAMS]
    hints = typing.get_type_hints(SamplingParams)
    for f, s in zip(fields, PARAMS):
        assert f.default == s.default, f.name
        assert hints[f.name] == s.annotation(), f.name
