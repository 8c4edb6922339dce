"""Issue 27's command-line, file and training classes: what a number, a row, a file or a library can do
to sgpt ends in one line `sgpt: error: ...` (exit 1 or 2), never a traceback, and loses nothing
already finished."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import SGPT, run_env
from sgpt_cli.errors import UsageError
from sgpt_cli.settings import CHAT_SETTINGS, PARAMS, SERVE, WHOLE_MOST, by_name, sampling_params_from

HUGE = 10**400  # past float's range: math.isfinite(HUGE) raises OverflowError
VAST = "1" + "0" * 5000  # past Python's int-digit limit (4,300): int(VAST) raises ValueError


def sgpt(*args, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + list(args), input=stdin, capture_output=True, text=True, env=run_env(NO_COLOR="1"),
                          cwd=cwd, timeout=300)


def one_line(proc, code: int, *words) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout and lines[0].startswith("sgpt: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --- class 1: numbers of any size ------------------------------------------------------------------

NUMERIC = [s for s in PARAMS + tuple(CHAT_SETTINGS) + SERVE if s.kind in (int, float) and not s.repeat]


@pytest.mark.parametrize("value", [HUGE, -HUGE, 2**1100, 2**63], ids=["huge", "huge negative", "2**1100", "2**63"])
@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.name)
def test_every_numeric_setting_refuses_any_size_of_whole_number_in_one_line(setting, value):
    if setting.high is not None and value <= setting.high and value >= (setting.low or 0):
        pytest.skip("in range")  # --seed takes 2**63
    with pytest.raises(UsageError) as caught:
        setting.check(value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


def test_a_whole_number_as_text_past_the_int_digit_limit_is_a_usage_error_from_set():
    for setting in NUMERIC:
        with pytest.raises(UsageError):
            setting.parse(VAST)
        with pytest.raises(UsageError):
            setting.parse(str(HUGE))


def test_the_largest_count_a_setting_without_a_limit_takes_is_int64s():
    max_tokens = by_name(PARAMS)["max_tokens"]
    assert max_tokens.check(WHOLE_MOST) == WHOLE_MOST
    with pytest.raises(UsageError, match="at most"):
        max_tokens.check(WHOLE_MOST + 1)


def test_a_float_setting_takes_a_whole_number_in_range_exactly():
    assert by_name(PARAMS)["temperature"].check(3) == 3.0


def test_a_json_row_with_a_huge_number_is_a_usage_error_not_an_overflow():
    for name in ("max_tokens", "seed", "top_k", "temperature", "top_p", "min_p", "repetition_penalty", "logprobs"):
        with pytest.raises(UsageError, match=name):
            sampling_params_from({name: HUGE})


def test_chat_set_with_a_huge_number_keeps_the_session_and_the_old_value():
    from sgpt_cli.infer.chat_session import ChatSession

    session = ChatSession(list("abc \n:"), 32)
    before = session.settings.max_tokens
    for name in ("max_tokens", "seed", "top_k", "temperature"):
        with pytest.raises(UsageError):
            session.set(name, str(HUGE))
        with pytest.raises(UsageError):
            session.set(name, VAST)
    assert session.settings.max_tokens == before


def test_a_number_flag_of_400_digits_is_one_line_exit_2_on_every_command():
    big = str(HUGE)
    for args in (["complete", "-n", big, "R"], ["complete", "--seed", big, "R"], ["complete", "--top-k", big, "R"],
                 ["complete", "--batch-size", big, "--batch", "-"], ["complete", "--num-samples", big, "R"],
                 ["complete", "--temperature", big, "R"], ["chat", "--max-tokens", big],
                 ["chat", "--seed", big],
                 ["serve", "--rows", big], ["serve", "--port", big], ["serve", "--max-body", big],
                 ["train", "--max-iters", big], ["train", "--n-layer", big], ["train", "--lr", big]):
        one_line(sgpt(*args), 2, "must be")


def test_a_number_flag_past_the_int_digit_limit_is_one_line_exit_2():
    one_line(sgpt("complete", "-n", VAST, "R"), 2)
    one_line(sgpt("train", "--max-iters", VAST), 2)


def test_numbers_that_a_word_also_sets_take_the_word_help_shows(tiny_onnx):
    proc = sgpt("complete", "-m", str(tiny_onnx), "--logprobs", "off", "--top-k", "off", "--top-p", "off",
                "--seed", "random", "-n", "3", "R")
    assert proc.returncode == 0, proc.stderr
    proc = sgpt("complete", "-m", str(tiny_onnx), "--json", "--logprobs", "2", "--seed", "1", "-n", "2", "R")
    assert proc.returncode == 0 and "logprobs" in json.loads(proc.stdout), proc.stderr
    one_line(sgpt("complete", "-m", str(tiny_onnx), "--logprobs", "lots", "R"), 2, "--logprobs")
    assert "[default: off]" in sgpt("complete", "--help").stdout


def test_a_batch_keeps_its_finished_rows_and_records_each_bad_rows_error(tiny_onnx):
    rows = [{"prompt": "RO", "max_tokens": 3, "seed": 1},
            {"prompt": "a", "max_tokens": HUGE},
            {"prompt": "b", "seed": -HUGE},
            {"prompt": "c", "temperature": HUGE},
            {"prompt": "d", "id": {"a": [1]}},
            {"prompt": "e", "id": [1]},
            {"prompt": "f", "id": True},
            {"prompt": "g", "id": None},
            {"prompt": "JU", "max_tokens": 3, "seed": 2, "id": "last"}]
    lines = [json.dumps(r) for r in rows] + ['{"prompt": "h", "max_tokens": ' + VAST + "}"]
    proc = sgpt("complete", "-m", str(tiny_onnx), "--batch", "-", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["chars"] == 3 and out[-2]["id"] == "last" and out[-2]["chars"] == 3
    errors = [o for o in out if "error" in o]
    assert [o["line"] for o in errors] == [2, 3, 4, 5, 6, 7, 8, 10]
    ids = [o["error"] for o in errors[3:7]]
    assert len(set(ids)) == 1 and "string or a finite number" in ids[0]
    assert "digits" in errors[-1]["error"] and "set_int_max_str_digits" not in errors[-1]["error"]
    said = proc.stderr.strip().splitlines()
    assert len(said) == 8 and all(s.startswith("sgpt: error: line ") for s in said), said


# --- item 2: a library's own warnings never reach the user raw ---------------------------------------

def test_a_checkpoint_load_lets_no_library_warning_out(tiny_ckpt, monkeypatch):
    """torch 2.14+ warns on a sparse tensor in a file; whatever torch says while loading stays inside."""
    import warnings

    torch = pytest.importorskip("torch")
    from sgpt_cli.train import checkpoint

    real = torch.load

    def noisy(*args, **kwargs):
        warnings.warn("torch's own two lines\nof warning", UserWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escaped would raise here
        assert checkpoint.load(tiny_ckpt)["model"]


def test_sgpt_prints_only_its_own_line_whatever_a_library_warns_on_the_way(tmp_path):
    """A library warning issued anywhere in a command (numpy's RuntimeWarning, a UserWarning) is not printed;
    -W or PYTHONWARNINGS still shows them to a developer who asks."""
    code = ("import sys, warnings\n"
            "import numpy as np\n"
            "import sgpt_cli.term.app as app\n"
            "from sgpt_cli.errors import SgptError\n"
            "def dispatch(argv):\n"
            "    np.log(np.zeros(1))\n"
            "    np.array([np.inf]) - np.array([np.inf])\n"
            "    warnings.warn('a library says\\nthis on two lines', UserWarning)\n"
            "    raise SgptError('the one line')\n"
            "app.dispatch = dispatch\n"
            "sys.argv = ['sgpt', 'eval']\n"
            "app.main()\n")
    proc = subprocess.run([SGPT[0], "-c", code], capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.returncode == 1 and proc.stderr == "sgpt: error: the one line\n", proc.stderr
    proc = subprocess.run([SGPT[0], "-W", "default", "-c", code], capture_output=True, text=True, env=run_env(),
                          timeout=120)
    assert "UserWarning" in proc.stderr and "RuntimeWarning" in proc.stderr


# --- class 8: one JSON writer for every output -------------------------------------------------------

HOSTILE_NAME = "m\x9b\u202e\u200bx"


def test_complete_json_escapes_terminal_controls_in_a_hostile_path(tiny_onnx, tmp_path):
    model = tmp_path / f"{HOSTILE_NAME}.onnx"
    model.symlink_to(tiny_onnx)
    proc = sgpt("complete", "-m", str(model), "--json", "--seed", "1", "-n", "3", "R\x85\u2028")
    assert proc.returncode == 0, proc.stderr
    for raw in ("\x9b", "\u202e", "\u200b", "\x85", "\u2028"):
        assert raw not in proc.stdout
    result = json.loads(proc.stdout)
    assert result["model"] == str(model) and result["prompt"].startswith("R\x85\u2028")


def test_eval_json_escapes_terminal_controls_in_hostile_paths(tiny_onnx, text_file, tmp_path):
    model, data = tmp_path / f"{HOSTILE_NAME}.onnx", tmp_path / f"{HOSTILE_NAME}\u2066.txt"
    model.symlink_to(tiny_onnx)
    data.write_text(text_file.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    proc = sgpt("eval", "-m", str(model), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert not set(proc.stdout) & set("\x9b\u202e\u200b\u2066")
    result = json.loads(proc.stdout)
    assert result["model"] == str(model) and result["data"] == str(data)


def test_the_one_json_writer_is_what_batch_complete_eval_and_serve_use():
    import inspect

    from sgpt_cli import jsonout
    from sgpt_cli.term import batch, complete
    from sgpt_cli.term import eval as eval_cmd

    assert batch.dumps is jsonout.dumps
    for module in (complete, eval_cmd, batch):
        assert "json.dumps(" not in inspect.getsource(module), module.__name__
    text = jsonout.dumps({"k": "\x9b\u202e\u200b\ud800é"})
    assert text == '{"k": "\\u009b\\u202e\\u200b\\ud800é"}'
    with pytest.raises(ValueError):
        jsonout.dumps(float("nan"))


def test_eval_refuses_a_model_whose_loss_is_not_finite(tiny_onnx, text_file, monkeypatch):
    from sgpt_cli.errors import SgptError
    from sgpt_cli.infer import onnx_model
    from sgpt_cli.infer.model_lookup import open_model
    from sgpt_cli.term import eval as eval_cmd

    monkeypatch.setattr(onnx_model, "score_ids", lambda *a, **k: (float("nan"), 10))
    with pytest.raises(SgptError, match="no finite score"):
        eval_cmd.evaluate(open_model(str(tiny_onnx), "cpu"), text_file, "val")


# --- class 9: unpacking the corpus on a full disk -----------------------------------------------------

def test_unpacking_the_corpus_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from sgpt_cli import data
    from sgpt_cli.errors import SgptError

    real = Path.write_bytes

    def full(self, raw):
        real(self, raw[:1000])  # part of it went down before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    dest = tmp_path / "home" / "data" / data.DATA_NAME
    with pytest.raises(SgptError) as caught:
        data.ensure_default_data(dest)
    message = str(caught.value)
    assert "No space left on device" in message and "--data" in message and "\n" not in message
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file, no temporary


def test_a_full_disk_under_sgpt_home_is_one_line_from_the_command(tmp_path):
    """The whole command: `sgpt eval` with no --data unpacks the corpus under $SGPT_HOME, on a disk that
    fills part way (a sitecustomize in the child makes every Path.write_bytes fail so)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import errno, pathlib\n"
        "real = pathlib.Path.write_bytes\n"
        "def full(self, data):\n"
        "    real(self, data[:1000])\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "pathlib.Path.write_bytes = full\n")
    home = tmp_path / "home"
    env = run_env(SGPT_HOME=str(home))
    env["PYTHONPATH"] = f"{hooks}:{env['PYTHONPATH']}"
    for command in (["eval"], ["train", "--preset", "tiny", "--max-iters", "1", "--out", str(tmp_path / "m.pt")]):
        proc = subprocess.run(SGPT + command, capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
        one_line(proc, 1, "No space left on device", "training text")
        assert list((home / "data").iterdir()) == []  # no partial file, no temporary


# --- class 10: hostile files ------------------------------------------------------------------------

def test_an_onnx_vocabulary_of_nested_brackets_is_one_line(tiny_onnx, tmp_path, text_file):
    from test_hostile import edited_model

    for nested in ("[" * 100_000 + "]" * 100_000, "[" * 100_000, '{"a":' * 50_000):
        path = edited_model(tiny_onnx, tmp_path / "deep.onnx", sgpt_vocab=nested)
        for args in (["complete", "-m", str(path), "-n", "2", "R"], ["eval", "-m", str(path), "--data", str(text_file)]):
            one_line(sgpt(*args, cwd=tmp_path), 1, "vocabulary")


def test_an_onnx_train_config_of_nested_brackets_is_only_not_shown(tiny_onnx, tmp_path):
    from sgpt_cli.infer.onnx_model import OnnxModel, model_summary
    from test_hostile import edited_model

    path = edited_model(tiny_onnx, tmp_path / "deep.onnx", sgpt_train_config="[" * 100_000)
    assert model_summary(OnnxModel(path, device="cpu"))["train_config"] == {}


def _config_edit(**values):
    def edit(ckpt):
        ckpt["model_config"].update(values)
    return edit


CLAIMS = {
    "n_embd 2**40": (_config_edit(n_embd=2**40), "--n-embd must be from 1 to"),
    "n_embd 2**40 and heads to match": (_config_edit(n_embd=2**40, n_head=2**20), "--n-embd"),
    "n_layer 10**6": (_config_edit(n_layer=10**6), "--n-layer must be from 1 to"),
    "n_layer one more than stored": (lambda c: c["model_config"].__setitem__("n_layer", c["model_config"]["n_layer"] + 1),
                                     "blocks"),
    "n_layer 400 digits": (_config_edit(n_layer=10**400), "--n-layer"),
    "vocab_size 2**40": (_config_edit(vocab_size=2**40), "vocabulary"),
    "qk_norm 'yes'": (_config_edit(qk_norm="yes"), "qk_norm is 'yes', not true or false"),
    "qk_norm 1": (_config_edit(qk_norm=1), "qk_norm is 1, not true or false"),
    "tied_head 'false'": (_config_edit(tied_head="false"), "tied_head"),
    "n_layer 2.0": (_config_edit(n_layer=2.0), "n_layer is 2.0, not a whole number"),
    "n_layer true": (_config_edit(n_layer=True), "n_layer is True"),
    "mlp a list": (_config_edit(mlp=["gelu"]), "mlp is ['gelu'], not a text"),
    "dropout 400 digits": (_config_edit(dropout=10**400), "dropout is a huge number"),
    "logit_cap NaN": (_config_edit(logit_cap=float("nan")), "logit_cap is nan"),
    "train_config qk_norm 'yes'": (lambda c: c["train_config"].__setitem__("qk_norm", "yes"), "train_config"),
    "train_config max_iters 1e3": (lambda c: c["train_config"].__setitem__("max_iters", 1e3), "train_config"),
}


@pytest.mark.parametrize("case", list(CLAIMS))
def test_a_checkpoint_claiming_a_shape_it_does_not_hold_is_refused_before_anything_is_built(case, tiny_ckpt,
                                                                                             tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from sgpt_cli.errors import SgptError
    from sgpt_cli.train import checkpoint, model

    ckpt = torch.load(checkpoint.last_path(tiny_ckpt), weights_only=True)
    CLAIMS[case][0](ckpt)
    path = tmp_path / "claim.pt"
    torch.save(ckpt, path)
    built = []
    real_init = model.Block.__init__
    monkeypatch.setattr(model.Block, "__init__", lambda self, cfg: (built.append(1), real_init(self, cfg))[1])
    with pytest.raises(SgptError) as caught:
        checkpoint.load(path)
    assert CLAIMS[case][1] in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert len(built) <= 2  # no model of the claimed size was built, not even on the meta device


def test_a_checkpoint_claiming_a_huge_width_is_one_line_from_export_and_train(tiny_ckpt, tmp_path, text_file):
    torch = pytest.importorskip("torch")
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["model_config"]["n_embd"] = 2**40
    path = tmp_path / "wide.pt"
    torch.save(ckpt, path)
    one_line(sgpt("export", str(path), "--out", str(tmp_path / "w.onnx")), 1, "n-embd")
    one_line(sgpt("train", "--preset", "tiny", "--init-from", str(path), "--data", str(text_file), "--out",
                  str(tmp_path / "n.pt"), "--max-iters", "2", cwd=tmp_path), 1, "n-embd")
    assert not (tmp_path / "w.onnx").exists() and not (tmp_path / "n.pt").exists()


def test_the_model_config_limits_leave_every_preset_buildable():
    from sgpt_cli.config import PRESETS, build_train_config

    for name in PRESETS:
        build_train_config(name, {}).model_config(vocab_size=65).validate()
    with pytest.raises(UsageError, match="--n-layer"):
        build_train_config("tiny", {"n_layer": 10**6})


# --- class 12: signal handlers from the first instant ---------------------------------------------

# the child signals itself at the moment it starts importing TARGET: the window the battery hit by timing
_SIGNAL_DURING_IMPORT = """
import os, signal, sys
SIG, TARGET = getattr(signal, sys.argv[1]), sys.argv[2]
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == TARGET:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), SIG)
        return None
sys.meta_path.insert(0, Finder())
sys.argv = ["sgpt", *sys.argv[3:]]
from sgpt_cli.term.app import main
main()
"""

SIGNAL_COMMANDS = {
    "train": (["train", "--preset", "tiny", "--max-iters", "1", "--data", "DATA", "--out", "OUT"], ("typer", "torch")),
    "serve": (["serve", "--port", "0"], ("typer", "uvicorn", "onnxruntime")),
    "chat": (["chat", "--seed", "1"], ("typer", "rich", "onnxruntime")),
    "export": (["export", "CKPT", "--out", "OUT"], ("typer", "torch", "onnx")),
}


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("command", list(SIGNAL_COMMANDS))
def test_a_signal_during_a_commands_imports_ends_it_as_one_later_would(command, signame, tmp_path, text_file,
                                                                       tiny_ckpt):
    import signal

    args, targets = SIGNAL_COMMANDS[command]
    args = [{"DATA": str(text_file), "OUT": str(tmp_path / "out.x"), "CKPT": str(tiny_ckpt)}.get(a, a) for a in args]
    for target in targets:
        proc = subprocess.run([SGPT[0], "-c", _SIGNAL_DURING_IMPORT, signame, target, *args], capture_output=True,
                              text=True, env=run_env(NO_COLOR="1"), cwd=tmp_path, timeout=120, stdin=subprocess.PIPE)
        assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, (target, proc.stderr)
        if signame != "SIGINT" and command == "chat":  # chat keeps the default action, before and after start-up
            assert proc.returncode == -getattr(signal, signame), (target, proc.returncode, proc.stderr)
            continue
        # 130; a shell reads Python's own exit by SIGINT (after a KeyboardInterrupt passed through an
        # extension's PyRun_String) as 130 too
        assert proc.returncode in (130, -signal.SIGINT), (target, proc.returncode, proc.stderr)
        assert proc.stderr.strip() == "sgpt: interrupted", (target, proc.stderr)
        assert list(tmp_path.iterdir()) == [], target  # nothing written, not even half


# --- defect 3: a resumed budgeted run gets the same budget again ----------------------------------

def _budgeted_run(tmp_path, text_file, should_stop=lambda: False):
    pytest.importorskip("torch")
    from sgpt_cli.config import build_train_config
    from sgpt_cli.data import read_text
    from sgpt_cli.train import checkpoint, trainer

    text, sha = read_text(text_file)
    cfg = build_train_config("tiny", {"time_budget": 2.0, "max_iters": 10**6, "eval_iters": 2, "sample_chars": 0})
    out = tmp_path / "b.pt"
    result = trainer.train(cfg, text, sha, out, device="cpu", should_stop=should_stop)
    return result, checkpoint.load(checkpoint.last_path(out)), (out, sha, text)


def test_a_run_that_stopped_to_leave_time_for_its_final_measurement_counts_as_spent(tmp_path, text_file,
                                                                                    one_torch_thread):
    from sgpt_cli.train import resume, trainer

    result, last, (out, sha, text) = _budgeted_run(tmp_path, text_file)
    assert result.status == "time" and last["budget_spent"] is True
    _, again = resume.load_resume_state(out, sha, None, {}, text=text)
    assert again.time_budget == pytest.approx(last["train_seconds"] + 2.0)  # the same budget again
    _, more = resume.load_resume_state(out, sha, None, {"time_budget": 5.0}, text=text)
    assert more.time_budget == pytest.approx(last["train_seconds"] + 5.0)  # --time-budget: this much more


def test_a_budgeted_run_stopped_by_the_user_goes_on_with_what_was_left(tmp_path, text_file, one_torch_thread):
    from sgpt_cli.train import resume, trainer

    calls = []

    def after_a_few_steps() -> bool:
        calls.append(1)
        return len(calls) > 5

    result, last, (out, sha, text) = _budgeted_run(tmp_path, text_file, after_a_few_steps)
    assert result.status == "interrupted" and "budget_spent" not in last
    _, rest = resume.load_resume_state(out, sha, None, {}, text=text)
    assert rest.time_budget == 2.0  # a total: the resumed session gets the seconds not yet spent


# --- defect 5: what a new user reads ---------------------------------------------------------------

class _Terminal:
    """A terminal `columns` wide, as rich and sgpt's checks see one."""

    def __new__(cls, columns: int):
        import io

        from rich.console import Console

        class TtyIO(io.StringIO):
            def isatty(self):
                return True

        return Console(file=TtyIO(), width=columns, force_terminal=True, color_system=None, highlight=False,
                       markup=False, emoji=False)


@pytest.mark.parametrize("columns", [40, 60, 80, 100, 120])
def test_the_chat_banner_breaks_between_facts_never_inside_one(columns):
    from sgpt_cli.term.repl import banner

    console = _Terminal(columns)
    summary = {"path": "/home/someone/projects/shakespeare/models/export/my-shakespeare.onnx", "device": "cpu",
               "val_loss": 1.4287}
    banner(console, summary, "--model", False, 0.51, seed=574808156)
    facts = {"sgpt chat", "cpu", "val loss 1.4287", "seed 574808156", "loaded in 0.51 s",
             "/home/someone/projects/shakespeare/models/export/my-shakespeare.onnx (--model)"}
    rows = [row.rstrip() for row in console.file.getvalue().splitlines()]
    for row in rows:
        assert all(part in facts for part in row.split("  ·  ")), rows  # every fact whole on its row
        assert len(row) <= columns or row in facts, rows  # wider: one fact alone, wrapped by the terminal


@pytest.mark.parametrize("columns", [50, 80, 100, 120])
def test_the_heat_legend_keeps_each_swatch_with_its_words(columns):
    from rich.text import Text

    from sgpt_cli.term.chat_reply import HEAT, heat_legend_parts, print_parts

    console = _Terminal(columns)
    print_parts(console, heat_legend_parts(), Text("  "))
    text = console.file.getvalue()
    for _, _, words in HEAT:
        assert "■ " + words in text, text
    assert all(len(row.rstrip()) <= columns for row in text.splitlines())


def test_piped_show_and_help_are_not_padded_to_a_width(tmp_path):
    proc = sgpt("chat", "--seed", "1", stdin="/show\n/help\n/set\n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and not [line for line in lines if line != line.rstrip()], lines
    shape = [line for line in lines if line.startswith("shape")]
    assert len(shape) == 1 and "vocabulary" in shape[0]  # a row is one line, whatever its length
    assert any(line.startswith("heat (/set heat on):") and "■ under 10%" in line for line in lines)


def test_a_piped_enter_after_a_scene_shows_its_open_last_line_once(tmp_path):
    scene = tmp_path / "scene.txt"
    scene.write_text("JULIET:\nO Romeo, Romeo! wherefore art thou", encoding="utf-8")
    proc = sgpt("chat", str(scene), "--seed", "3", "--max-tokens", "40", stdin="\n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert proc.stdout.count("wherefore art thou") == 1, proc.stdout
    assert lines[0] == "JULIET:" and lines[1].startswith("O Romeo, Romeo! wherefore art thou") \
        and len(lines[1]) > len("O Romeo, Romeo! wherefore art thou"), lines
    assert sgpt("chat", str(scene), stdin="", cwd=tmp_path).stdout.endswith("wherefore art thou\n")
    # text typed after the open line still shows on a prompt line of its own
    proc = sgpt("chat", str(scene), "--seed", "3", "--max-tokens", "20", stdin="ROMEO:\n", cwd=tmp_path)
    assert proc.stdout.splitlines()[1:3] == ["O Romeo, Romeo! wherefore art thou", ">>> ROMEO:"], proc.stdout


def test_a_batch_row_error_starts_as_every_error_does(tiny_onnx):
    proc = sgpt("complete", "-m", str(tiny_onnx), "--batch", "-", stdin='{"prompt": 5}\n')
    assert proc.stderr.startswith("sgpt: error: line 1: "), proc.stderr


def test_export_help_says_the_default_text_is_unpacked_from_sgpts_copy_and_where_it_writes():
    text = " ".join(sgpt("export", "--help").stdout.split())
    assert "unpacked from sgpt's copy" in text and "downloaded" not in text
    assert "export/NAME.onnx" in text


def test_the_loss_pictures_title_names_the_val_loss_the_terminal_export_and_eval_say(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.text import Text

    from sgpt_cli.train import plot

    rows = [{"iter": i, "train_loss": 3 - i / 50, "val_loss": 2.5 - i / 100, "lr": 1e-3, "elapsed": i}
            for i in (20, 40, 60)]
    fig = plot.loss_figure(rows, val_loss=2.3239)
    title = fig.axes[0].get_title()
    assert "val loss 2.3239 (whole validation split)" in title and "best val estimate 1.9000" in title
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.axes[0].title.get_window_extent(renderer)
    for text in fig.findobj(Text):
        if text is not fig.axes[0].title and text.get_text() and text.get_visible():
            assert not text.get_window_extent(renderer).overlaps(box), text.get_text()
    assert "best val 1" not in plot.loss_figure(rows).axes[0].get_title()  # an estimate is called one
    metrics = tmp_path / "m.metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot.render_curves(metrics, tmp_path / "m.loss.png", val_loss=2.3239)
    assert (tmp_path / "m.loss.png").stat().st_size > 0


# --- defect 4: export never replaces another model's export unasked ---------------------------------

def test_export_names_its_output_after_the_checkpoint_and_the_next_lines_work(tmp_path, text_file):
    import shlex

    pytest.importorskip("torch")
    (tmp_path / "export").mkdir()
    other = tmp_path / "export" / "model.onnx"
    other.write_bytes(b"another model's export")
    trained = sgpt("train", "--preset", "tiny", "--max-iters", "4", "--eval-iters", "2", "--sample-chars", "0",
                   "--data", str(text_file), "--out", "models/dev-tuned.pt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    nxt = [line for line in trained.stdout.splitlines() if line.startswith("next: ")]
    assert nxt == ["next: sgpt export models/dev-tuned.pt   (writes export/dev-tuned.onnx)"], trained.stdout
    exported = sgpt(*shlex.split(nxt[0][len("next: sgpt "):].split("   (")[0]), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert other.read_bytes() == b"another model's export"  # untouched
    assert (tmp_path / "export" / "dev-tuned.onnx").is_file()
    chat_line = [line for line in exported.stdout.splitlines() if line.startswith("next")]
    assert chat_line == ["next        sgpt chat --model export/dev-tuned.onnx"], exported.stdout
    chat = sgpt(*shlex.split(chat_line[0].split(None, 1)[1])[1:], "--seed", "1", stdin="/show\n", cwd=tmp_path)
    assert chat.returncode == 0 and "export/dev-tuned.onnx" in chat.stdout, chat.stderr


def test_the_default_export_path_follows_the_checkpoints_name():
    from pathlib import Path

    from sgpt_cli.settings import export_out_for

    assert export_out_for("models/model.pt") == Path("export/model.onnx")  # the README's flow is unchanged
    assert export_out_for(Path("/runs/a/dev-tuned.pt")) == Path("export/dev-tuned.onnx")


def test_every_numeric_field_of_a_server_request_refuses_a_huge_number_as_a_400():
    from sgpt_cli.web.openai_api import ApiError, Limits, parse_chat, parse_completion

    stoi = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ROMEJULIT:\n")}
    fields = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "n",
              "logprobs", "frequency_penalty", "presence_penalty")
    for field in fields:
        for value in (HUGE, -HUGE):
            with pytest.raises(ApiError) as caught:
                parse_completion({"prompt": "ROMEO:", field: value}, "m", stoi, 32, Limits())
            assert caught.value.status == 400, (field, caught.value.status)
            with pytest.raises(ApiError) as caught:
                parse_chat({"messages": [{"role": "user", "content": "hi"}], field: value}, "m", list(stoi), 32,
                           Limits())
            assert caught.value.status == 400, (field, caught.value.status)


def test_a_server_body_with_a_number_past_the_int_digit_limit_is_a_400():
    import asyncio

    pytest.importorskip("starlette")
    from sgpt_cli.web.openai_api import ApiError
    from sgpt_cli.web.server import read_json

    class Body:
        headers: dict = {}

        async def stream(self):
            yield b'{"prompt": "R", "max_tokens": ' + VAST.encode() + b"}"

    with pytest.raises(ApiError) as caught:
        asyncio.run(read_json(Body(), 1 << 20))
    assert caught.value.status == 400 and "digits" in caught.value.message, caught.value.message
    assert "set_int_max_str_digits" not in caught.value.message


def test_the_servers_json_responses_escape_terminal_controls():
    pytest.importorskip("starlette")
    from sgpt_cli.web.server import JSONResponse

    body = JSONResponse({"model": "m\x9b\u202e\u200b"}).body.decode("utf-8")
    assert body == '{"model": "m\\u009b\\u202e\\u200b"}'


def test_a_huge_set_in_a_piped_chat_is_one_line_and_the_session_goes_on(tmp_path):
    proc = sgpt("chat", "--seed", "1", stdin=f"/set max_tokens {HUGE}\n/set seed {VAST}\n/show\n", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # 1: a piped input was refused
    refused = [line for line in proc.stderr.splitlines() if "max_tokens" in line or "seed must" in line]
    assert len(refused) == 2 and all(len(line) < 200 for line in refused), proc.stderr
    assert any(line.split() == ["max_tokens", "300"] for line in proc.stdout.splitlines())  # /show: unchanged


def test_training_flags_of_any_size_are_refused_in_the_configs_own_words():
    from sgpt_cli.config import build_train_config

    for name, value, words in (("seed", HUGE, "--seed must be between 0 and 2**63 - 1 (got a number of about 401"),
                               ("max_iters", 10**30, "--max-iters must be below 2**63"),
                               ("eval_interval", -HUGE, "--eval-interval must be at least 1 (got a number of about"),
                               ("n_embd", 2**40, "--n-embd must be from 1 to 65536")):
        with pytest.raises(UsageError) as caught:
            build_train_config("tiny", {name: value})
        assert words in str(caught.value) and len(str(caught.value)) < 200, str(caught.value)
