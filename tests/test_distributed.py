"""torchrun on the CPU (gloo): 2 processes with batch B follow 1 process with batch 2B (and 1 process with batch B
and --grad_accum 2) step for step, in pretraining and fine-tuning; a SIGKILL or SIGTERM to the launcher leaves no
worker behind and the run resumes bit-equal. Dropout is off: its masks differ per process."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import MICRO0, ROOT, assert_same_state, micro_setup, nsmc_head, read_log, torchrun, wait_for

import pretrain
import train
from store import PretrainStore, collate_pretrain
from training import split_step

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo"),
    pytest.mark.usefixtures("one_thread"),
]


def assert_close_weights(a, b, atol=1e-5):
    a, b = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, worst


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_spm):
    return micro_setup(tmp_path_factory.mktemp("ddp"), sample_spm, MICRO0)


def pretrain_args(s, name, *extra):
    return [
        "--config",
        s["config"],
        "--vocab",
        s["vocab"],
        "--input",
        s["instances"],
        "--save",
        str(s["dir"] / f"{name}.pth"),
        "--log_dir",
        str(s["dir"] / name),
        "--epoch",
        "2",
        "--lr",
        "1e-3",
        "--fp32",
        "--log_every",
        "1",
        *extra,
    ]


def test_pretrain_two_processes_match_one(setup, monkeypatch):
    out = torchrun("pretrain.py", pretrain_args(setup, "two", "--batch", "4"))
    assert "effective batch 8 (4 x 1 micro-batches x 2 processes)" in out and out.count("model:") == 1  # rank 0 prints
    pretrain.main(pretrain_args(setup, "one", "--batch", "8"))
    cuts = []  # the micro-batches of --grad_accum 2, cut from each step sorted by length (instances of 8-25 tokens)
    monkeypatch.setattr(pretrain, "split_step", lambda *a: cuts.append(a[-1] is not None) or split_step(*a))
    pretrain.main(pretrain_args(setup, "accum", "--batch", "4", "--grad_accum", "2"))
    assert cuts and all(cuts)
    one = read_log(setup["dir"] / "one" / "log.csv")
    assert len(one) == 12  # 48 instances / 8 per step x 2 epochs
    for name in ("two", "accum"):
        rows = read_log(setup["dir"] / name / "log.csv")
        assert [r["step"] for r in rows] == [r["step"] for r in one]
        for col in ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"):
            assert [float(r[col]) for r in rows] == pytest.approx([float(r[col]) for r in one], rel=1e-5), (name, col)
        assert_close_weights(setup["dir"] / f"{name}.pth", setup["dir"] / "one.pth")


def test_micro_batches_are_cut_from_the_step_sorted_by_length_and_padded_to_multiples_of_16():
    lengths = np.array([30, 5, 18, 9, 40, 3, 22, 12])
    step = [4, 0, 7, 1, 6, 2, 5, 3]
    assert split_step(step, 0, 1, 2) == [[4, 0, 7, 1], [6, 2, 5, 3]]  # no lengths: the order kept
    assert split_step(step, 0, 1, 2, lengths) == [[5, 1, 3, 7], [2, 6, 0, 4]]  # 3 5 9 12 | 18 22 30 40
    # two processes: rank r takes items r::2 of the step, then sorts its own share
    assert split_step(step, 0, 2, 2, lengths) == [[5, 7], [6, 4]] and split_step(step, 1, 2, 2, lengths) == [
        [1, 3],
        [2, 0],
    ]
    store = [(np.arange(n) + 5, 1, 0, np.array([1]), np.array([9])) for n in (5, 9)]
    assert collate_pretrain(store)["input_ids"].shape == (2, 9)  # no max_len: the longest
    batch = collate_pretrain(store, max_len=25)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum().item() == 14
    assert collate_pretrain(store, max_len=12)["input_ids"].shape == (2, 12)  # not past the data's longest


def test_the_store_gives_every_instance_length_read_a_chunk_at_a_time(setup):
    store = PretrainStore(setup["instances"])
    want = [len(store[i][0]) for i in range(len(store))]
    assert len(set(want)) > 3  # instances of 8-25 tokens
    assert store.lengths().tolist() == store.lengths(chunk=5).tolist() == want


def test_pretrain_two_processes_killed_in_a_save_then_resumed_by_one(setup):
    """Rank 0 of a 2-process run is SIGKILLed halfway through its 3rd save; the run goes on in 1 process with the
    same effective batch (8) from the step-2 checkpoint to the weights of the uninterrupted run."""
    torchrun(
        "pretrain.py",
        pretrain_args(setup, "half", "--batch", "4", "--save_steps", "1"),
        ok=False,
        BERT_KILL_IN_SAVE="3",
    )
    state = torch.load(setup["dir"] / "half.pth", weights_only=True)
    assert state["step"] == state["epoch_step"] == 2 and len(state["rng"]) == 2
    pretrain.main(pretrain_args(setup, "half", "--batch", "8"))
    assert_close_weights(setup["dir"] / "half.pth", setup["dir"] / "one.pth")


def test_fine_tuning_two_processes_match_one(setup):
    d = setup["dir"]
    data = ["--train", nsmc_head(d / "train.txt", 300), "--test", nsmc_head(d / "test.txt", 60), "--valid", "0.2"]

    def args(name, batch):
        return [
            "--config",
            setup["config"],
            "--vocab",
            setup["vocab"],
            *data,
            "--save",
            str(d / f"{name}.pth"),
            "--epoch",
            "2",
            "--batch",
            batch,
            "--lr",
            "1e-3",
            "--n_seq",
            "32",
            "--fp32",
            "--log_dir",
            str(d / name),
        ]

    torchrun("train.py", args("ft2", "8"))
    train.main(args("ft1", "16"))
    two, one = read_log(d / "ft2" / "log.csv"), read_log(d / "ft1" / "log.csv")
    assert len(one) == len(two) == 2
    for col in ("train_loss", "valid_loss", "test_loss", "valid_acc", "test_acc"):
        assert [float(r[col]) for r in two] == pytest.approx([float(r[col]) for r in one], rel=1e-5), col
    assert_close_weights(d / "ft2.pth", d / "ft1.pth")


# 48 instances, 2 processes x batch 2: 12 steps an epoch, 48 in all, a checkpoint after each
LONG = ("--batch", "2", "--epoch", "4", "--save_steps", "1")


def start_torchrun(script, args, log, n=2):
    """torchrun in a session of its own (so that a test can kill its process group), its output to a file: a pipe
    would stay open, and communicate() wait, for as long as any worker that outlives torchrun."""
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), script, *args],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def proc_stat(pid):
    """(state, parent pid) of a process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def workers_of(pid):
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and (proc_stat(int(d)) or ("", 0))[1] == pid]


def alive(pid):
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie is dead, waiting for its new parent to reap it


@pytest.fixture(scope="module")
def long_run(setup):
    """The uninterrupted 2-process run the killed ones must end equal to."""
    torchrun("pretrain.py", pretrain_args(setup, "long", *LONG))
    return setup["dir"] / "long.pth"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_sigkill_to_the_launcher_leaves_no_worker_then_resume(setup, long_run):
    """SIGKILL to torchrun's process group (kill -9, the out-of-memory killer): torch starts the workers in sessions
    of their own, so only the agent dies; its workers must follow within 10 s, writing nothing more, and the same
    command then resumes from the last checkpoint."""
    save, log = setup["dir"] / "orphan.pth", setup["dir"] / "orphan.out"
    p = start_torchrun("pretrain.py", pretrain_args(setup, "orphan", *LONG), log)
    wait_for(save, p, log=log)
    workers = workers_of(p.pid)
    assert len(workers) == 2
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = torch.load(save, weights_only=True)["step"]
    assert killed_at < 48, "finished before the kill: lengthen the run"
    t = time.time()
    while any(alive(w) for w in workers) and time.time() - t < 10:
        time.sleep(0.05)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)  # not left to race the rest of the tests
    assert not left, f"{len(left)} of 2 workers still running 10 s after their agent was killed"
    # +1: a save that was renamed into place in the instant of the kill
    assert torch.load(save, weights_only=True)["step"] <= killed_at + 1, "the workers went on writing --save"
    out = torchrun("pretrain.py", pretrain_args(setup, "orphan", *LONG))
    assert f"resuming from {save}: " in out
    assert_same_state(save, long_run)


def test_sigterm_to_the_launcher_saves_then_resume(setup, long_run):
    """SIGTERM to torchrun itself (a scheduler's preemption): torchrun sends it on to the workers, which finish the
    step, save and exit 143 with the `SIGTERM: saved` line, as when they get it directly; the same command resumes."""
    save, log = setup["dir"] / "term.pth", setup["dir"] / "term.out"
    p = start_torchrun("pretrain.py", pretrain_args(setup, "term", *LONG), log)
    wait_for(save, p, log=log)
    workers = workers_of(p.pid)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    with open(log) as f:
        out = f.read()
    # torchrun's own exit: status 1 and its SignalException traceback, whatever the workers do. Now and then torch's
    # launcher then aborts in its own teardown ("terminate called without an active exception", SIGABRT, seen on
    # a Zen 5 with torch 2.13), after the same traceback: torch's, not ours, so that exit is taken too
    assert p.returncode in (1, -signal.SIGABRT), out[-3000:]
    assert out.count("Traceback") == 1 and "SignalException: Process" in out, out[-3000:]
    saved = re.findall(rf"SIGTERM: saved {re.escape(str(save))} at step (\d+); run the same command to resume", out)
    assert len(saved) == 1, out[-3000:]  # rank 0's line, once
    assert not any(alive(w) for w in workers)  # torchrun waited for them
    assert int(saved[0]) == torch.load(save, weights_only=True)["step"] < 48
    torchrun("pretrain.py", pretrain_args(setup, "term", *LONG))
    assert_same_state(save, long_run)


@pytest.mark.parametrize(("body", "code", "out", "err"), [
    ("print('saved', end='')", 0, "saved", ""),
    ("raise UserError('bad --input')", 2, "", "error: bad --input"),
    ("print('saved', end=''); sys.exit(143)", 143, "saved", ""),
])
def test_a_torchrun_worker_exits_with_its_status_and_output_but_skips_interpreter_shutdown(body, code, out, err):
    """Under torchrun (RANK set) main_guard ends the process with os._exit, so gloo's threads never meet the
    interpreter's shutdown (an atexit handler, run by that shutdown, stays silent); the exit status and the buffered
    output of the run are kept."""
    script = (
        "import atexit, sys\nfrom errors import UserError, main_guard\n"
        "atexit.register(lambda: print('interpreter shutdown', file=sys.stderr))\n"
        f"def main():\n    {body}\nmain_guard(main)\n"
    )
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RANK": "1"}, check=False)
    assert (p.returncode, p.stdout, p.stderr.strip()) == (code, out, err)
    alone = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "RANK"}, check=False)
    assert (alone.returncode, alone.stdout) == (code, out)
    assert alone.stderr.strip().endswith("interpreter shutdown")  # without RANK the usual shutdown runs
