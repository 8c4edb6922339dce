"""Stop strings by the 100,000: sgpt_cli.infer.stops.StopMatcher behaves exactly as the
engine's first matcher (copied below as the reference) and costs the same per character whatever
the number of stop strings; the count and length of stop strings are capped where they are declared."""

from __future__ import annotations

import random
import time

import pytest

from sgpt_cli.errors import UsageError
from sgpt_cli.settings import NAME, SAMPLING, STOP_LONGEST, STOP_MOST, SamplingParams, sampling_params_from
from sgpt_cli.infer.stops import StopMatcher


class ReferenceStopMatcher:
    """The reference matcher, the plainest one: searches every stop string at every push."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(stops)
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def pieces_of(text: str, rng: random.Random, single: bool) -> list[str]:
    if single:
        return list(text)
    out, i = [], 0
    while i < len(text):
        n = rng.choice((0, 1, 1, 2, 3, 5, 8))
        out.append(text[i:i + n])
        i += n
    return out


def replay(matcher, pieces):
    """What the engine does with a matcher: push until a stop, else flush at the end."""
    events = []
    for p in pieces:
        out, stopped = matcher.push(p)
        events.append((out, stopped))
        if stopped:
            return events
    events.append((matcher.flush(), None))
    return events


@pytest.mark.parametrize("single", [True, False], ids=["one character a push", "pieces of any length"])
def test_the_new_matcher_gives_what_the_reference_gives_on_random_texts(single):
    rng = random.Random(17)
    for trial in range(3000):
        alphabet = "ab" if trial % 3 == 0 else "abc\n" if trial % 3 == 1 else "abcdé\n "
        stops = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
                      for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        pieces = pieces_of(text, rng, single)
        assert replay(StopMatcher(stops), pieces) == replay(ReferenceStopMatcher(stops), pieces), (stops, pieces)


def test_overlapping_nested_and_repeated_stops_match_the_reference():
    cases = [(("abcd", "bc"), "xabcdy"), (("bc", "abcd"), "abcd"), (("b", "abcd"), ["abcd"]),
             (("aab",), "aaab"), (("abab", "bab"), "ababab"), (("a", "a"), "ba"), (("\n\n",), "x\n\ny"),
             (("ana", "nan"), "banana"), (("abc",), "ababc"), (("xyz",), "xyxyxy")]
    for stops, text in cases:
        pieces = list(text) if isinstance(text, str) else text
        assert replay(StopMatcher(stops), pieces) == replay(ReferenceStopMatcher(stops), pieces), (stops, text)
        assert replay(StopMatcher(stops), [text if isinstance(text, str) else "".join(text)]) == \
            replay(ReferenceStopMatcher(stops), [text if isinstance(text, str) else "".join(text)])


def test_no_stops_hold_nothing_back_and_flush_empties():
    m = StopMatcher(())
    assert m.push("abc") == ("abc", False) and m.flush() == ""
    m = StopMatcher(("xy",))
    assert m.push("ax") == ("a", False) and m.pending == "x"
    assert m.flush() == "x" and m.push("y") == ("y", False)  # flush starts over


def test_the_held_back_text_never_exceeds_the_longest_stop_string():
    rng = random.Random(3)
    stops = tuple("a" * n + "b" for n in range(1, 30))
    m = StopMatcher(stops)
    for _ in range(2000):
        m.push(rng.choice("aaaa"))
        assert len(m.pending) <= max(map(len, stops)) - 1


def test_a_characters_cost_does_not_grow_with_the_number_of_stop_strings():
    """Counted in automaton steps, not timed: the same text costs the same number of steps with 10
    or 100,000 stop strings (the reference searched all of them at each character)."""
    rng = random.Random(5)
    text = "".join(rng.choice("abcdefgh ") for _ in range(2000))

    def steps(stops) -> int:
        m = StopMatcher(stops)
        count = 0
        real = m.auto.step

        def counted(state, ch):
            nonlocal count
            count += 1
            return real(state, ch)

        m.auto.step = counted
        try:
            for ch in text:
                if m.push(ch)[1]:
                    break
        finally:
            m.auto.step = real
        return count

    few = tuple(f"zz{i}" for i in range(10))
    many = tuple(f"zz{i}" for i in range(100_000))  # never matched: every character is examined
    assert steps(few) == steps(many) == len(text)


def test_100000_stop_strings_on_200_characters_take_well_under_a_second():
    stops = tuple(f"STOP{i:06d}" for i in range(100_000))
    m = StopMatcher(stops)  # built once (shared by every row with these stops)
    t0 = time.perf_counter()
    out = "".join(m.push(c)[0] for c in "the quick brown fox " * 10)
    assert out == ("the quick brown fox " * 10)
    assert time.perf_counter() - t0 < 1.0  # a generous bound: the reference took 20.8 s


def test_the_stop_setting_declares_its_caps_and_every_route_checks_them():
    stop = next(s for s in SAMPLING if s.name == "stop")
    assert (stop.most, stop.longest) == (STOP_MOST, STOP_LONGEST)
    with pytest.raises(UsageError, match=f"at most {STOP_MOST:,} values"):
        sampling_params_from({"stop": ["x"] * (STOP_MOST + 1)}, NAME)  # a --batch row
    with pytest.raises(UsageError, match=f"at most {STOP_LONGEST:,} characters"):
        SamplingParams(stop=("y" * (STOP_LONGEST + 1),))  # checked when made
    with pytest.raises(UsageError, match="must be a list of strings"):
        sampling_params_from({"stop": {"a": 1}}, NAME)  # a mapping is not the list of its keys
    assert sampling_params_from({"stop": ["a", "b"]}, NAME).stop == ("a", "b")
