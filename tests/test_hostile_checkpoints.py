"""One checkpoint check that every reader (export, `train --init-from`,
`train --resume`) goes through (sgpt_cli.train.checkpoint.load -> check_contents); a FIFO is refused
before anything opens it; a failed save says what is on disk, with advice that leads somewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SGPT, run_env
from sgpt_cli.errors import SgptError

torch = pytest.importorskip("torch")

from sgpt_cli.train import checkpoint  # noqa: E402  (torch)


def sgpt(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + list(args), capture_output=True, text=True, env=run_env(NO_COLOR="1"), cwd=cwd,
                          timeout=300)


def one_line_failure(proc, *words) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def edited(src: Path, dest: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dest)
    return dest


def set_weight(key, make):
    def edit(ckpt):
        ckpt["model"][key] = make(ckpt["model"][key])
    return edit


# the cases and more of the same classes: (edit, what the one line says)
MODEL_CASES = {
    "zero-size embedding": (set_weight("wte.weight", lambda t: t[:0]), "wte.weight of shape"),
    "model_config a string": (lambda c: c.__setitem__("model_config", "oops"), "model_config is not a table"),
    "model_config with a text width": (lambda c: c["model_config"].__setitem__("n_embd", "wide"), "model_config"),
    "sparse weight": (set_weight("wte.weight", lambda t: t.to_sparse()), "sparse_coo tensor"),
    "int64 weight": (set_weight("wte.weight", lambda t: t.to(torch.int64)), "is int64"),
    "float16 weight": (set_weight("wte.weight", lambda t: t.half()), "is float16"),
    "complex64 weight": (set_weight("wte.weight", lambda t: t.to(torch.complex64)), "is complex64"),
    "a weight that is a number": (set_weight("wte.weight", lambda t: 3), "not a tensor"),
    "vocabulary of the wrong size": (lambda c: c.__setitem__("vocab", '["a", "b"]'), "2 characters in the vocabulary"),
    "vocabulary with a lone surrogate": (lambda c: c.__setitem__("vocab", '["\\ud800"]'), "U+D800"),
}
STATE_CASES = {
    "optimizer without param_groups": (lambda c: c.__setitem__("optimizer", {"bad": 1}), "optimizer state"),
    "optimizer groups of the wrong kind": (lambda c: c["optimizer"]["chained"][0].__setitem__("param_groups", [1]),
                                           "optimizer state"),
    "an empty optimizer chain": (lambda c: c["optimizer"].__setitem__("chained", []), "optimizer state"),
    "iteration NaN as text": (lambda c: c.__setitem__("iter", "NaN"), "iteration count is 'NaN'"),
    "iteration as a bool": (lambda c: c.__setitem__("iter", True), "iteration count"),
    "negative iteration": (lambda c: c.__setitem__("iter", -5), "iteration count"),
    "train_seconds as text": (lambda c: c.__setitem__("train_seconds", "soon"), "train_seconds"),
    "train_config a list": (lambda c: c.__setitem__("train_config", [1]), "train_config"),
    "train_config with an infinite rate": (lambda c: c["train_config"].__setitem__("learning_rate", float("inf")), "train_config"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES) + list(STATE_CASES))
def test_one_check_refuses_every_hostile_checkpoint_for_every_reader(case, tiny_ckpt, tmp_path):
    edit, words = {**MODEL_CASES, **STATE_CASES}[case]
    src = checkpoint.last_path(tiny_ckpt)  # the full one: weights and training state
    path = edited(src, tmp_path / "bad.pt", edit)
    with pytest.raises(SgptError) as exc:
        checkpoint.load(path)  # what export, --init-from, --resume and strip_training_state all call
    message = str(exc.value)
    assert words in message and "\n" not in message, message
    assert ("retrain it" in message) if case in MODEL_CASES else ("--force" in message)


def test_the_good_checkpoints_still_load(tiny_ckpt):
    assert checkpoint.load(tiny_ckpt)["model"] and checkpoint.load(checkpoint.last_path(tiny_ckpt))["optimizer"]


@pytest.mark.parametrize("case", ["zero-size embedding", "model_config a string", "sparse weight", "float16 weight"])
def test_train_init_from_refuses_hostile_weights_in_one_line(case, tiny_ckpt, tmp_path, text_file):
    path = edited(tiny_ckpt, tmp_path / "bad.pt", MODEL_CASES[case][0])
    done = sgpt("train", "--preset", "tiny", "--init-from", str(path), "--data", str(text_file), "--out",
                str(tmp_path / "new.pt"), "--max-iters", "2", cwd=tmp_path)
    one_line_failure(done, MODEL_CASES[case][1])
    assert not (tmp_path / "new.pt").exists()


@pytest.mark.parametrize("case", ["optimizer without param_groups", "iteration NaN as text"])
def test_train_resume_refuses_a_hostile_training_state_in_one_line(case, tiny_ckpt, tmp_path, text_file):
    out = tmp_path / "t.pt"
    shutil.copy(tiny_ckpt, out)
    edited(checkpoint.last_path(tiny_ckpt), checkpoint.last_path(out), STATE_CASES[case][0])
    before = checkpoint.last_path(out).read_bytes()
    done = sgpt("train", "--preset", "tiny", "--resume", "--data", str(text_file), "--out", str(out),
                "--max-iters", "80", cwd=tmp_path)
    one_line_failure(done, STATE_CASES[case][1])
    assert checkpoint.last_path(out).read_bytes() == before  # nothing replaced


def test_an_optimizer_state_for_another_model_is_one_line_on_resume(tiny_ckpt, tmp_path, text_file):
    """Right kinds, wrong sizes: torch's own load_state_dict refuses it, in one line."""
    out = tmp_path / "t.pt"
    shutil.copy(tiny_ckpt, out)

    def drop_a_group(c):
        first = c["optimizer"]["chained"][0]
        first["param_groups"] = first["param_groups"][:1] + [dict(first["param_groups"][0], params=[10_000])]
    edited(checkpoint.last_path(tiny_ckpt), checkpoint.last_path(out), drop_a_group)
    done = sgpt("train", "--preset", "tiny", "--resume", "--data", str(text_file), "--out", str(out),
                "--max-iters", "80", cwd=tmp_path)
    one_line_failure(done, "does not fit its model", "--force")


# --- 8. a FIFO is never opened -----------------------------------------------------------------

@pytest.mark.parametrize("command", [["export", "{fifo}", "--out", "x.onnx"],
                                     ["train", "--preset", "tiny", "--init-from", "{fifo}", "--data", "{data}",
                                      "--out", "n.pt", "--max-iters", "2"],
                                     ["train", "--preset", "tiny", "--resume", "--data", "{data}", "--out", "{fifo}"]],
                         ids=["export", "train --init-from", "train --resume"])
def test_a_fifo_as_the_checkpoint_is_refused_without_blocking(command, tmp_path, text_file):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    args = [a.format(fifo=fifo, data=text_file) for a in command]
    done = sgpt(*args, cwd=tmp_path)  # the timeout in sgpt() is the hang this used to be
    line = one_line_failure(done)
    assert "FIFO" in line or "not a regular file" in line, line


# --- 9. what a failed save leaves, said from the files -------------------------------------------

def failed_save(run) -> str:
    from sgpt_cli.train import trainer

    with pytest.raises(SgptError) as exc:
        with trainer._disk_errors(run):
            raise checkpoint.WriteError(f"cannot write {checkpoint.last_path(run.out)}: No space left on device")
    return str(exc.value)


def test_a_full_disk_at_the_first_save_says_the_weights_were_written(tmp_path):
    out = tmp_path / "t.pt"
    out.write_bytes(b"weights")  # the best checkpoint got written, the resumable one did not
    message = failed_save(SimpleNamespace(out=out, saved_iter=None, best_iter=20))
    assert "nothing was saved" not in message
    assert "holds the weights of iteration 20" in message and "--force" in message and "--init-from" in message


def test_a_full_disk_before_any_file_says_nothing_was_saved(tmp_path):
    message = failed_save(SimpleNamespace(out=tmp_path / "t.pt", saved_iter=None, best_iter=None))
    assert "nothing was saved yet" in message


def test_a_full_disk_later_says_which_iteration_resume_continues(tmp_path):
    out = tmp_path / "t.pt"
    out.write_bytes(b"weights")
    checkpoint.last_path(out).write_bytes(b"state")
    message = failed_save(SimpleNamespace(out=out, saved_iter=40, best_iter=40))
    assert "iteration 40 is still safe" in message and "--resume" in message


def test_the_advice_for_a_weights_only_out_leads_to_a_run_that_works(tiny_ckpt, tmp_path, text_file):
    """Weights only (what the full disk left): neither message sends the user to the other, and the
    advice both give (--force) runs."""
    out = tmp_path / "t.pt"
    shutil.copy(tiny_ckpt, out)
    base = ["train", "--preset", "tiny", "--data", str(text_file), "--out", str(out), "--max-iters", "2",
            "--eval-interval", "2", "--eval-iters", "1", "--sample-chars", "0"]
    plain = one_line_failure(sgpt(*base, cwd=tmp_path), "--force")
    assert "--resume" not in plain
    resumed = one_line_failure(sgpt(*base, "--resume", cwd=tmp_path), "--force")
    assert "drop --resume to start" not in resumed
    done = sgpt(*base, "--force", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert checkpoint.last_path(out).exists()
