"""/v1/chat/completions' replies: a message is its speaker's whole speech, the reply is the next
speech, and a reply is never empty (the README's own example once gave "" for four seeds of six)."""

from __future__ import annotations

import pytest

from conftest import REPO
from sgpt_cli.web.openai_api import Limits, chat_script, parse_chat
from sgpt_cli.settings import ReplyParams, SamplingParams

SHIPPED = REPO / "models" / "shakespeare.onnx"
ROMEO = {"role": "user", "name": "ROMEO", "content": "But soft, what light?"}  # the README's example


@pytest.fixture(scope="module")
def model(tiny_onnx):
    from sgpt_cli.infer.onnx_model import OnnxModel

    return OnnxModel(tiny_onnx, device="cpu")


def test_a_named_user_message_is_its_speakers_whole_speech(model):
    script, _ = chat_script([ROMEO], model.tokenizer.chars, model.block_size)
    assert script == "ROMEO:\nBut soft, what light?\n\n"  # the reply is the next speech, not Romeo's rest
    script, _ = chat_script([{"role": "user", "content": "Two lines\nof a speech"}], model.tokenizer.chars, 1000)
    assert script == "Two lines\nof a speech\n\n"


def test_a_speakers_name_alone_opens_that_speakers_speech(model):
    chars = model.tokenizer.chars
    named = chat_script([ROMEO, {"role": "assistant", "name": "JULIET", "content": ""}], chars, 1000)[0]
    assert named == "ROMEO:\nBut soft, what light?\n\nJULIET:\n"
    typed = chat_script([ROMEO, {"role": "user", "content": "JULIET:"}], chars, 1000)[0]
    assert typed == named
    then = chat_script([{"role": "user", "name": "ROMEO", "content": ""}, {"role": "user", "content": "Soft."}],
                       chars, 1000)[0]
    assert then == "ROMEO:\nSoft.\n\n"  # a name alone, then the speech: one speech
    whole = chat_script([ROMEO, {"role": "assistant", "name": "JULIET", "content": "Ay me!"}], chars, 1000)[0]
    assert whole == "ROMEO:\nBut soft, what light?\n\nJULIET:\nAy me!\n\n"


def test_chat_replies_are_never_empty_by_their_parameters(model):
    req = parse_chat({"messages": [ROMEO]}, "tiny", model.tokenizer.chars, model.block_size, Limits())
    assert all(isinstance(p, ReplyParams) and p.never_empty for _, p in req.jobs)


def first_stop_case(model):
    """(seed, text of 40 characters, its first character) where the text after its leading run of
    that character holds something before the character comes again."""
    from sgpt_cli.infer.engine import Engine

    for seed in range(50):
        text = "".join(e.text for e in Engine(model).stream("ROMEO:\n", SamplingParams(seed=seed, max_tokens=40)))
        rest = text.lstrip(text[0]).split(text[0])[0]
        if rest:
            return seed, text, text[0], rest
    raise AssertionError("no seed of 50 gave a text with two different characters")


def test_a_speech_closed_at_once_goes_on_to_the_next(model):
    """A stop string completed before any character is given out is passed over for a chat reply
    (ReplyParams); the characters chosen stay those of the seed, and an ordinary request still
    ends there, empty."""
    from sgpt_cli.infer.engine import Engine

    seed, text, first, rest = first_stop_case(model)
    plain = list(Engine(model).stream("ROMEO:\n", SamplingParams(seed=seed, max_tokens=40, stop=(first,))))
    assert "".join(e.text for e in plain) == "" and plain[-1].stats.stop_reason == "stop"
    events = list(Engine(model).stream("ROMEO:\n", ReplyParams(seed=seed, max_tokens=40, stop=(first,),
                                                                 logprobs=0)))
    got = "".join(e.text for e in events)
    assert got == rest and events[-1].stats.chars == len(rest)
    assert "".join(t.token for e in events for t in e.logprobs) == got  # no closing character reported


def test_twenty_seeds_of_the_readme_chat_message_give_twenty_speeches():
    """On the shipped model, as a new user tries it: each reply is a whole next speech, none empty."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel

    shipped = OnnxModel(SHIPPED, device="cpu")
    replies = [""] * 20
    for base in (1, 11):  # seeds 1 to 20: choice j of a request gets seed + j
        req = parse_chat({"messages": [ROMEO], "seed": base, "n": 10, "max_tokens": 150}, "shakespeare",
                         shipped.tokenizer.chars, shipped.block_size, Limits())
        for ev in Engine(shipped).generate_batch(req.jobs):
            replies[base - 1 + ev.request] += ev.text
    assert all(r.strip() for r in replies), replies
    from sgpt_cli.infer.chat_session import is_speaker_line

    assert sum(is_speaker_line(r.split("\n")[0]) for r in replies) >= 18, replies  # the next speaker's name
