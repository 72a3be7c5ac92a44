"""Fault cases: SIGKILL at a random moment, a kill halfway through a save, SIGTERM, NaN losses, bad instance
lines, truncated/foreign/malicious/mismatched checkpoints. A resumed run must end with the very weights of an
uninterrupted one (CPU, same seed, dropout on: the RNG states are restored too)."""

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import MICRO, ROOT, assert_same_state, micro_setup, nsmc_head, wait_for, write_instances

import model as model_py
import pretrain
import train
from errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_spm):
    return micro_setup(tmp_path_factory.mktemp("resume"), sample_spm)


def args_for(s, save, *extra):
    return [
        "--config",
        s["config"],
        "--vocab",
        s["vocab"],
        "--input",
        s["instances"],
        "--save",
        str(save),
        "--epoch",
        "3",
        "--batch",
        "2",
        "--lr",
        "1e-3",
        "--fp32",
        "--save_steps",
        "1",
        "--log_every",
        "1",
        "--log_dir",
        str(save) + ".log",
        *extra,
    ]


def start(script, args, **env):
    return subprocess.Popen(
        [sys.executable, script, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


@pytest.fixture(scope="module")
def reference(setup):
    save = setup["dir"] / "ref.pth"
    pretrain.main(args_for(setup, save))
    return save


def test_sigkill_at_a_random_moment_then_resume(setup, reference, tmp_path, capsys):
    save = tmp_path / "killed.pth"
    p = start("pretrain.py", args_for(setup, save))
    wait_for(save, p)
    time.sleep(random.uniform(0, 0.5))
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL, "finished before the kill: lengthen the run"
    killed_at = torch.load(save, weights_only=True)["step"]
    assert 0 < killed_at <= 72
    pretrain.main(args_for(setup, save))
    assert f"resuming from {save}" in capsys.readouterr().out
    assert_same_state(save, reference)
    print(f"killed at step {killed_at} of 72")


def test_kill_halfway_through_a_save_keeps_the_previous_checkpoint(setup, reference, tmp_path):
    save = tmp_path / "cut.pth"
    n = random.randint(3, 60)  # the n-th save dies after writing half of the temporary file
    p = start("pretrain.py", args_for(setup, save), BERT_KILL_IN_SAVE=str(n))
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert torch.load(save, weights_only=True)["step"] == n - 1  # the previous checkpoint, whole
    (half,) = tmp_path.glob("cut.pth.tmp.*.*")  # the killed writer's own temporary file
    assert half.name == f"cut.pth.tmp.{socket.gethostname()}.{p.pid}"
    with pytest.raises(UserError, match=r"cut\.pth\.tmp\..* is not a readable checkpoint"):
        pretrain.main(args_for(setup, str(half)))  # the half-written file is refused in one line
    pretrain.main(args_for(setup, save))
    assert_same_state(save, reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_and_exit_then_resume(setup, reference, tmp_path, sig):
    save = tmp_path / "term.pth"
    p = start("pretrain.py", args_for(setup, save))
    wait_for(save, p)
    time.sleep(random.uniform(0, 0.3))
    p.send_signal(sig)
    _, err = p.communicate()
    assert p.returncode == 128 + sig and "Traceback" not in err
    assert f"{sig.name}: saved {save} at step" in err
    pretrain.main(args_for(setup, save))
    assert_same_state(save, reference)


def test_a_second_run_on_one_save_is_refused(setup, reference, tmp_path):
    """A second pretrain.py on the --save of a running one stops at once in one line and touches nothing; the lock
    goes with the first run's process (here a SIGKILL), and the run resumed from its checkpoint ends bit-equal."""
    save = tmp_path / "twice.pth"
    first = start("pretrain.py", args_for(setup, save))
    wait_for(save, first)
    os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the lock, so the timing cannot matter
    log = tmp_path / "twice.pth.log" / "log.csv"
    before = save.read_bytes(), log.read_bytes()
    second = start("pretrain.py", args_for(setup, save))
    _, err = second.communicate()
    assert second.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: {save} is in use by another run (pid {first.pid} on {socket.gethostname()}); "
        "wait for it or pass another --save"
    )
    assert (save.read_bytes(), log.read_bytes()) == before  # the first run's files, untouched
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    pretrain.main(args_for(setup, save))  # no stale lock to clear
    assert_same_state(save, reference)


def nan_on(calls, cls):
    """A forward that returns NaN outputs on the given call numbers (1-based)."""
    forward, count = cls.forward, [0]

    def wrapped(self, *a, **k):
        count[0] += 1
        out = forward(self, *a, **k)
        if count[0] in calls:
            return tuple(o * float("nan") for o in out) if isinstance(out, tuple) else out * float("nan")
        return out

    return wrapped


def test_nan_loss_is_skipped_and_logged(setup, tmp_path, monkeypatch, capsys):
    save = tmp_path / "nan.pth"
    monkeypatch.setattr(model_py.BertForPreTraining, "forward", nan_on({3}, model_py.BertForPreTraining))
    pretrain.main(args_for(setup, save, "--epoch", "1"))
    assert "step 3: NaN/inf loss, step skipped (1 in a row)" in capsys.readouterr().err
    with open(str(save) + ".log/log.csv") as f:
        assert [int(r.split(",")[-2]) for r in f.read().splitlines()[1:]][:4] == [0, 0, 1, 0]  # the skipped column
    state = torch.load(save, weights_only=True)
    assert state["step"] == 24 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_losses_in_a_row_stop_with_the_last_good_checkpoint(setup, tmp_path, monkeypatch):
    save = tmp_path / "nan.pth"
    monkeypatch.setattr(model_py.BertForPreTraining, "forward", nan_on(set(range(5, 100)), model_py.BertForPreTraining))
    with pytest.raises(
        UserError,
        match=r"stopped at step 7: 3 NaN/inf losses in a row .*nan\.pth \(step 6\) holds the last good weights",
    ):
        pretrain.main(args_for(setup, save, "--max_bad_steps", "3"))
    state = torch.load(save, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_in_fine_tuning_stops(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(
        model_py.BertForSequenceClassification,
        "forward",
        nan_on(set(range(1, 100)), model_py.BertForSequenceClassification),
    )
    with pytest.raises(
        UserError, match=r"stopped at step 2: 2 NaN/inf losses in a row .*no training state was written yet"
    ):
        train.main(finetune_args(setup, tmp_path, "--max_bad_steps", "2"))


def finetune_args(s, d, *extra):
    return [
        "--config",
        s["config"],
        "--vocab",
        s["vocab"],
        "--train",
        nsmc_head(d / "train.txt", 700, "ratings_test.txt"),
        "--test",
        nsmc_head(d / "test.txt", 20, "ratings_test.txt"),
        "--valid",
        "0.3",
        "--save",
        str(d / "best.pth"),
        "--epoch",
        "2",
        "--batch",
        "16",
        "--lr",
        "1e-3",
        "--n_seq",
        "32",
        "--fp32",
        "--log_dir",
        str(d / "log"),
        *extra,
    ]


def test_fine_tuning_killed_in_a_save_resumes_exactly(setup, tmp_path):
    """train.py with --save_steps 1 (490 reviews: 31 steps an epoch): killed halfway through its 40th save, resumed."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    ref.mkdir()
    cut.mkdir()
    train.main(finetune_args(setup, ref, "--save_steps", "1"))
    p = start("train.py", finetune_args(setup, cut, "--save_steps", "1"), BERT_KILL_IN_SAVE="40")
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    # saves 1-30: steps 1-30; epoch 1 ends at step 31: 31 the best model, 32 the state; 33-39: steps 32-38
    assert torch.load(cut / "best.resume.pth", weights_only=True)["step"] == 38
    with pytest.raises(UserError, match=r"best\.resume\.pth has layer_decay=1\.0 but this run has layer_decay=0\.8"):
        train.main(finetune_args(setup, cut, "--save_steps", "1", "--layer_decay", "0.8"))
    train.main(finetune_args(setup, cut, "--save_steps", "1"))
    assert not os.path.exists(cut / "best.resume.pth")  # done: only the model is left
    a, b = torch.load(ref / "best.pth", weights_only=True), torch.load(cut / "best.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["valid_acc"] == b["valid_acc"]
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_fine_tuning_with_layer_wise_lr_decay(setup, tmp_path, capsys):
    train.main(finetune_args(setup, tmp_path, "--epoch", "1", "--layer_decay", "0.8"))
    assert "LR x 0.8 a layer down (--layer_decay)" in capsys.readouterr().out
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 1
    for bad in ("0", "1.5"):
        with pytest.raises(UserError, match=rf"--layer_decay must be in \(0, 1\], got {bad}"):
            train.main(finetune_args(setup, tmp_path, "--layer_decay", bad))


def test_a_second_fine_tuning_on_one_save_is_refused(setup, tmp_path):
    """train.py locks --save and --resume: a second run with either stops in one line; the first finishes as if
    alone (its best model bit-equal to an uninterrupted run's)."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    train.main(finetune_args(setup, ref, "--save_steps", "1"))
    first = start("train.py", finetune_args(setup, run, "--save_steps", "1"))
    wait_for(run / "best.resume.pth", first)
    os.kill(first.pid, signal.SIGSTOP)
    holder = f"(pid {first.pid} on {socket.gethostname()})"
    for extra, busy, flag in (
        ([], run / "best.pth", "--save"),
        (
            ["--save", str(tmp_path / "other.pth"), "--resume", str(run / "best.resume.pth")],
            run / "best.resume.pth",
            "--resume",
        ),
    ):
        second = start("train.py", finetune_args(setup, run, "--save_steps", "1", *extra))
        _, err = second.communicate()
        assert second.returncode == 2 and "Traceback" not in err, err
        assert (
            err.strip().splitlines()[-1]
            == f"error: {busy} is in use by another run {holder}; wait for it or pass another {flag}"
        )
    os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate()
    assert first.returncode == 0, err
    a, b = torch.load(ref / "best.pth", weights_only=True), torch.load(run / "best.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["valid_acc"] == b["valid_acc"]
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_bad_lines_are_all_named_then_skipped_on_request(setup, tmp_path, capsys):
    with open(setup["instances"]) as f:
        lines = f.readlines()
    lines[1] = '{"tokens": [5, 9, 4\n'  # cut short
    lines[20] = lines[20].replace('"is_next"', '"x"')  # a field missing
    lines[47] = "\x00\x00garbage\n"  # the last line
    bad = tmp_path / "bad.json"
    bad.write_text("".join(lines))
    save = tmp_path / "b.pth"
    argv = args_for(setup, save, "--input", str(bad), "--epoch", "1")
    with pytest.raises(
        UserError, match=rf"{bad}:2: malformed JSON .*\(and 2 more bad lines, listed above\); or pass --skip_bad_lines"
    ):
        pretrain.main(argv)
    err = capsys.readouterr().err
    assert all(f"bad line: {bad}:{n}:" in err for n in (2, 21, 48))
    assert not os.path.exists(save)  # stopped before training
    pretrain.main(argv + ["--skip_bad_lines"])
    out, err = capsys.readouterr()
    assert "skipping 3 bad lines" in err and "45 instances" in out
    assert torch.load(save, weights_only=True)["step"] == 23  # 45 instances in batches of 2
    os.remove(save)
    with pytest.raises(UserError, match=r"bad\.json:2: malformed JSON"):  # the cache remembers them
        pretrain.main(argv)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARK}",))


EVIL_MARK = "/tmp/bert_evil_pickle_ran"


def test_foreign_truncated_malicious_and_mismatched_checkpoints(setup, reference, tmp_path):
    foreign = tmp_path / "foreign.pth"
    foreign.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=r"foreign\.pth is not a readable checkpoint"):
        pretrain.main(args_for(setup, foreign))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(reference.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"cut\.pth is not a readable checkpoint"):
        pretrain.main(args_for(setup, cut))
    evil = tmp_path / "evil.pth"
    torch.save({"model": Evil(), "config": {}}, evil)
    if os.path.exists(EVIL_MARK):
        os.remove(EVIL_MARK)
    with pytest.raises(UserError, match=r"evil\.pth is not a readable checkpoint \(UnpicklingError\)"):
        pretrain.main(args_for(setup, evil))
    assert not os.path.exists(EVIL_MARK)
    # stopped mid-epoch with another effective batch: the data order would differ
    mid = tmp_path / "mid.pth"
    pretrain.main(args_for(setup, mid, "--max_steps", "5"))
    with pytest.raises(UserError, match=r"global_batch=2 but this run has global_batch=4"):
        pretrain.main(args_for(setup, mid, "--grad_accum", "2"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**MICRO, "num_attention_heads": 4}))
    with pytest.raises(
        UserError, match=r"num_attention_heads=2 but the config in .*other\.json has num_attention_heads=4"
    ):
        pretrain.main(args_for(setup, mid, "--config", str(other)))


def test_dynamic_masking_and_held_out_eval_resume_exactly(setup, reference, tmp_path):
    held_out = write_instances(tmp_path / "held_out.json", 10, seed=1)
    extra = ["--dynamic_mask", "--eval_input", held_out, "--eval_steps", "10"]
    straight = tmp_path / "straight.pth"
    pretrain.main(args_for(setup, straight, *extra))
    stopped = tmp_path / "stopped.pth"
    p = start("pretrain.py", args_for(setup, stopped, *extra))
    wait_for(stopped, p)
    time.sleep(random.uniform(0, 0.3))
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    assert p.returncode == 128 + signal.SIGTERM, err
    pretrain.main(args_for(setup, stopped, *extra))
    assert_same_state(stopped, straight)  # the masks of a resumed epoch are drawn again, the same
    a, b = torch.load(straight, weights_only=True), torch.load(reference, weights_only=True)
    assert not torch.equal(
        a["model"]["bert.embeddings.word_embeddings.weight"], b["model"]["bert.embeddings.word_embeddings.weight"]
    )
    for save in (straight, stopped):
        with open(f"{save}.log/eval.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows] == [
            10,
            20,
            24,
            30,
            40,
            48,
            50,
            60,
            70,
            72,
        ]  # every 10 steps and at epoch ends
        assert all(0 <= float(r["mlm_acc"]) <= 1 and float(r["mlm_loss"]) > 0 for r in rows)
    with open(f"{straight}.log/eval.csv") as f, open(f"{stopped}.log/eval.csv") as g:
        assert f.read() == g.read()
