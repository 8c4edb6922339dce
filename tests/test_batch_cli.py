"""`sgpt complete --batch FILE` and `--num-samples N` (sgpt_cli.term.batch), end to end on the tiny model:
each batched row is exactly what `sgpt complete --seed S` writes for it alone."""

from __future__ import annotations

import json
import subprocess

import pytest

from sgpt_cli.term.batch import iter_batch, run_batch
from sgpt_cli.infer.engine import Event, GenerationStats
from sgpt_cli.settings import SamplingParams

from conftest import SGPT, run_env


def sgpt(args, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + args, input=stdin.encode(), capture_output=True, env=run_env(), cwd=cwd,
                          timeout=300)


def alone(model, prompt: str, *flags: str) -> str:
    done = sgpt(["complete", "--model", str(model), "--json", *flags, prompt])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["text"]


BATCH = "\n".join([
    json.dumps({"prompt": "ROMEO:", "id": "r", "seed": 4, "max_tokens": 70}),
    "JULIET:",  # a plain line is a prompt; it takes the flags' settings
    json.dumps({"prompt": "First Citizen:\nBefore we proceed", "seed": 9, "temperature": 0.0, "max_tokens": 45}),
    '{"prompt": "broken"',  # malformed: reported, the others still run
    json.dumps({"prompt": "KING:", "seed": 2, "stop": ["e", "\n"], "max_tokens": 60}),
    "",
    json.dumps({"prompt": "MENENIUS:", "seed": 5, "top_k": 0}),  # a bad setting
]) + "\n"


def test_batch_writes_json_lines_in_input_order_each_equal_to_its_single_run(tiny_onnx, tmp_path):
    (tmp_path / "in.jsonl").write_text(BATCH, encoding="utf-8")
    done = sgpt(["complete", "--model", str(tiny_onnx), "--batch", "in.jsonl", "-n", "50", "--seed", "11"], cwd=tmp_path)
    assert done.returncode == 1  # a malformed line: the exit status says so
    err = done.stderr.decode()
    assert "line 4: not valid JSON" in err and "line 7: top_k must be" in err
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == ["r", 2, 3, 4, 5, 7]
    assert rows[3] == {"id": 4, "line": 4, "error": rows[3]["error"]} and rows[5]["line"] == 7
    good = [r for r in rows if "text" in r]
    assert all(r["chars"] == len(r["text"]) for r in good)
    assert good[0]["text"] == alone(tiny_onnx, "ROMEO:", "--seed", "4", "-n", "70")
    assert good[1]["text"] == alone(tiny_onnx, "JULIET:", "--seed", "11", "-n", "50")
    assert good[2]["text"] == alone(tiny_onnx, "First Citizen:\nBefore we proceed", "--seed", "9", "-t", "0", "-n", "45")
    assert good[3]["text"] == alone(tiny_onnx, "KING:", "--seed", "2", "--stop", "e", "--stop", "\\n", "-n", "60")
    assert good[3]["stop_reason"] == "stop" and good[0]["stop_reason"] == "max_tokens"
    assert [r["seed"] for r in good] == [4, 11, 9, 2]  # each row says its seed


def test_batch_rows_without_a_seed_get_one_drawn_and_reported(tiny_onnx, tmp_path):
    """A row with no seed (and no --seed) says the seed it was drawn, and that
    seed repeats its text."""
    done = sgpt(["complete", "--model", str(tiny_onnx), "--batch", "-", "-n", "30", "-t", "1.0"], stdin="ROMEO:\n")
    assert done.returncode == 0, done.stderr.decode()
    row = json.loads(done.stdout.decode())
    assert isinstance(row["seed"], int)
    assert row["text"] == alone(tiny_onnx, "ROMEO:", "--seed", str(row["seed"]), "-n", "30", "-t", "1.0")


def test_batch_from_stdin_with_batch_size_one_gives_the_same_lines(tiny_onnx):
    rows = [json.dumps({"prompt": p, "seed": i}) for i, p in enumerate(["A", "BB:", "", "Is't so?"] * 2)]
    lines = "\n".join(rows[:3] + [""] + rows[3:])  # a blank line is no request
    outs = [sgpt(["complete", "--model", str(tiny_onnx), "--batch", "-", "-n", "40", *size], lines)
            for size in ([], ["--batch-size", "1"], ["--batch-size", "3"])]
    assert all(o.returncode == 0 for o in outs), outs[0].stderr
    assert outs[0].stdout == outs[1].stdout == outs[2].stdout
    assert [json.loads(x)["id"] for x in outs[0].stdout.decode().splitlines()] == [1, 2, 3, 5, 6, 7, 8, 9]


def test_num_samples_are_the_single_runs_with_seeds_s_to_s_plus_n(tiny_onnx):
    done = sgpt(["complete", "--model", str(tiny_onnx), "--num-samples", "3", "--seed", "20", "-n", "60",
                 "--json", "ROMEO:"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [s["seed"] for s in result["samples"]] == [20, 21, 22]
    for s in result["samples"]:
        assert s["text"] == alone(tiny_onnx, "ROMEO:", "--seed", str(s["seed"]), "-n", "60")
    plain = sgpt(["complete", "--model", str(tiny_onnx), "--num-samples", "3", "--seed", "20", "-n", "60", "ROMEO:"])
    text = plain.stdout.decode()
    for i, s in enumerate(result["samples"]):
        assert f"--- sample {i + 1} of 3 (seed {s['seed']}) ---\n{s['text']}" in text


def test_batch_and_num_samples_rows_carry_the_logprobs_of_their_single_runs(tiny_onnx):
    """--logprobs for every row, or "logprobs" in a row; each row's numbers are exactly those of its
    single run (`complete --json --logprobs`)."""
    lines = "\n".join([json.dumps({"prompt": "ROMEO:", "seed": 3, "logprobs": 2}), json.dumps({"prompt": "K", "seed": 4})])
    done = sgpt(["complete", "--model", str(tiny_onnx), "--batch", "-", "-n", "30"], lines)
    assert done.returncode == 0, done.stderr
    asked, plain = [json.loads(x) for x in done.stdout.decode().splitlines()]
    single = sgpt(["complete", "--model", str(tiny_onnx), "--json", "--seed", "3", "-n", "30", "--logprobs", "2", "ROMEO:"])
    assert asked["logprobs"] == json.loads(single.stdout)["logprobs"] and "logprobs" not in plain
    assert "".join(c["token"] for c in asked["logprobs"]["content"]) == asked["text"]
    every = sgpt(["complete", "--model", str(tiny_onnx), "--batch", "-", "-n", "30", "--logprobs", "0"], lines)
    rows = [json.loads(x) for x in every.stdout.decode().splitlines()]
    assert all(len(r["logprobs"]["content"]) == r["chars"] for r in rows)
    samples = sgpt(["complete", "--model", str(tiny_onnx), "--num-samples", "2", "--seed", "3", "-n", "30", "--json",
                    "--logprobs", "2", "ROMEO:"])
    assert json.loads(samples.stdout)["samples"][0]["logprobs"] == asked["logprobs"]


@pytest.mark.parametrize("args, message, code", [
    (["--batch", "-", "PROMPT"], "give no PROMPT argument", 2),
    (["--batch", "-", "--num-samples", "2"], "neither --num-samples nor --echo", 2),
    (["--batch", "no-such-file.jsonl"], "cannot read --batch no-such-file.jsonl", 1),
    (["--num-samples", "0", "x"], "--num-samples must be", 2),
    (["--batch-size", "0", "--batch", "-"], "--batch-size must be", 2),
])
def test_batch_usage_errors_are_one_line(tiny_onnx, tmp_path, args, message, code):
    done = sgpt(["complete", "--model", str(tiny_onnx), *args], "x\n", cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == code, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- run_batch's order and Ctrl-C, with a stand-in engine ------------------------------------------

class Scripted:
    """An engine whose generate_batch yields the given events, then maybe raises Ctrl-C."""

    def __init__(self, events, interrupt=False):
        self.events, self.interrupt = events, interrupt

    def generate_batch(self, reqs, batch_size=None):
        list(reqs)  # an engine takes its requests before it yields their events
        for ev in self.events:
            yield ev
        if self.interrupt:
            raise KeyboardInterrupt


def stats(reason="max_tokens", chars=2):
    return GenerationStats(prompt_chars=1, chars=chars, ttft_s=0.0, seconds=0.1, chars_per_s=20.0, stop_reason=reason)


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, s):
        self.lines += [x for x in s.splitlines() if x]

    def flush(self):
        pass


def test_a_row_is_written_when_it_and_every_earlier_row_are_done():
    lines = list(iter_batch(["a", "b", "c"], SamplingParams()))
    out, err, seen = Log(), Log(), []

    class Watch(Scripted):
        def generate_batch(self, reqs, batch_size=None):
            for ev in super().generate_batch(reqs, batch_size):
                seen.append(len(out.lines))
                yield ev

    events = [Event(1, "xy", stats()), Event(2, "zz", stats()), Event(0, "ab", stats())]
    assert run_batch(Watch(events), lines, out, err, None) == 0
    assert seen == [0, 0, 0]  # rows 1 and 2 waited for row 0
    assert [json.loads(x)["id"] for x in out.lines] == [1, 2, 3]


def test_ctrl_c_writes_what_finished_and_exits_130():
    lines = list(iter_batch(["a", "b", "c", "d"], SamplingParams()))
    out, err = Log(), Log()
    events = [Event(0, "ab", stats()), Event(2, "cd", stats()), Event(1, "x", stats("interrupted"))]
    assert run_batch(Scripted(events, interrupt=True), lines, out, err, None) == 130
    assert [json.loads(x)["id"] for x in out.lines] == [1, 3]  # finished rows, in input order


def test_a_batch_reads_json_rows_plain_lines_and_reports_the_rest():
    got = list(iter_batch(['{"prompt": "x", "seed": 3, "stop": "\\n"}', "plain text", "1999", "   ", '["a"]',
                           '{"prompt": "y", "colour": 1}', '{"prompt": "z", "seed": -1}',
                           '{"prompt": "w", "max_tokens": 2.5}'],
                          SamplingParams(seed=7, max_tokens=9)))
    assert got[0].prompt == "x" and got[0].params.seed == 3 and got[0].params.stop == ("\n",)
    assert got[0].params.max_tokens == 9  # the flags' value where the row says nothing
    assert got[1].prompt == "plain text" and got[1].params.seed == 7 and got[1].id == 2
    assert got[2].prompt == "1999" and got[3].prompt == '["a"]'  # valid JSON but not an object: a prompt
    assert [g.number for g in got] == [1, 2, 3, 5, 6, 7, 8]  # the blank line is skipped
    assert "unknown key 'colour'" in got[4].error
    assert "seed must be" in got[5].error and "max_tokens must be" in got[6].error
