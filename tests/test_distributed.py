"""torchrun on the CPU (gloo): 2 processes with batch B follow 1 process with batch 2B (and 1 process with batch B
and --grad_accum 2) step for step, in pretraining and fine-tuning. Dropout is off: its masks differ per process."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import write_instances

import pretrain
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
MICRO0 = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(script, args, n=2, ok=True, **env):
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert (p.returncode == 0) == ok, p.stdout + p.stderr
    return p.stdout


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_close_weights(a, b, atol=1e-5):
    a, b = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, worst


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_spm):
    d = tmp_path_factory.mktemp("ddp")
    (d / "micro0.json").write_text(json.dumps(MICRO0))
    return {
        "dir": d,
        "config": str(d / "micro0.json"),
        "vocab": sample_spm,
        "instances": write_instances(d / "inst.json", 48),
    }


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


def test_pretrain_two_processes_match_one(setup):
    out = torchrun("pretrain.py", pretrain_args(setup, "two", "--batch", "4"))
    assert "effective batch 8 (4 x 1 micro-batches x 2 processes)" in out and out.count("model:") == 1  # rank 0 prints
    pretrain.main(pretrain_args(setup, "one", "--batch", "8"))
    pretrain.main(pretrain_args(setup, "accum", "--batch", "4", "--grad_accum", "2"))
    one = read_log(setup["dir"] / "one" / "log.csv")
    assert len(one) == 12  # 48 instances / 8 per step x 2 epochs
    for name in ("two", "accum"):
        rows = read_log(setup["dir"] / name / "log.csv")
        assert [r["step"] for r in rows] == [r["step"] for r in one]
        for col in ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"):
            assert [float(r[col]) for r in rows] == pytest.approx([float(r[col]) for r in one], rel=1e-5), (name, col)
        assert_close_weights(setup["dir"] / f"{name}.pth", setup["dir"] / "one.pth")


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


def nsmc_head(path, n):
    with open(os.path.join(SAMPLE, "ratings_train.txt"), encoding="utf-8") as f:
        path.write_text("".join(f.readline() for _ in range(n + 1)), encoding="utf-8")
    return str(path)


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
