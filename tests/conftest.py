"""What several test files share: paths, the micro model configs, the sample vocabulary, instance files, and
helpers to run the scripts as a user does (one process, or torchrun) and to compare their checkpoints."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

# Under pytest-xdist (`pytest -n auto`, what test.sh runs) each worker's torch and the scripts it starts get their
# share of the cores: n workers of all-cores torch each would run n times more threads than cores, and two-thread
# jobs side by side on 2 cores were seen to slow each other tenfold. OMP_NUM_THREADS set by the user wins.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the scripts are top-level modules, not a package

SAMPLE = os.path.join(ROOT, "data", "sample")
SAMPLE_CORPUS = os.path.join(SAMPLE, "kowiki-sample.txt.xz")

# a model small enough for many training runs a test: 1 layer, hidden 32
MICRO = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
MICRO0 = {**MICRO, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # dropout off
# the model tests' config: an odd vocabulary, 2 layers, 4 heads of 16
CFG = {
    "vocab_size": 301,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 32,
}


@pytest.fixture(scope="session")
def sample_spm(tmp_path_factory):
    """Path of a small BPE model (1000 + 7 pieces) trained once on the sample corpus."""
    import vocab

    prefix = str(tmp_path_factory.mktemp("spm") / "sample")
    return vocab.train_vocab(SAMPLE_CORPUS, prefix, vocab_size=1000, character_coverage=0.99)


@pytest.fixture(scope="module")
def one_thread():
    """One thread, in the test process (`pytestmark = pytest.mark.usefixtures("one_thread")`) and in the scripts it
    starts (OMP_NUM_THREADS=1 below): the same arithmetic in both (bit-equal weights), and no thread
    oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_instances(path, n, seed=0):
    """n random but well-formed pretraining instances (ids below 1007, the sample vocabulary's size)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            la, lb = rng.integers(3, 12, 2)
            tokens = [5, *rng.integers(7, 1007, la).tolist(), 4, *rng.integers(7, 1007, lb).tolist(), 4]
            pos = sorted(rng.choice(np.arange(1, len(tokens) - 1), 3, replace=False).tolist())
            f.write(
                json.dumps(
                    {
                        "tokens": tokens,
                        "segment": [0] * int(la + 2) + [1] * int(lb + 1),
                        "is_next": int(rng.integers(2)),
                        "mask_pos": pos,
                        "mask_label": rng.integers(7, 1007, 3).tolist(),
                    }
                )
                + "\n"
            )
    return str(path)


def micro_setup(d, vocab, config=MICRO, held_out=False):
    """A pretraining set-up in folder d: the config as d/micro.json, 48 instances (and 10 held out)."""
    (d / "micro.json").write_text(json.dumps(config))
    s = {"dir": d, "config": str(d / "micro.json"), "vocab": vocab, "instances": write_instances(d / "inst.json", 48)}
    if held_out:
        s["held_out"] = write_instances(d / "held_out.json", 10, seed=1)
    return s


def nsmc_head(dst, n, src="ratings_train.txt"):
    """The header and the first n reviews of a sample NSMC file, written to dst -> its path."""
    with open(os.path.join(SAMPLE, src), encoding="utf-8") as f:
        lines = [f.readline() for _ in range(n + 1)]
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return str(dst)


def gpu_script_inputs(tmp_path):
    """What the GPU scripts' CPU dry runs read: a micro model config with 128 positions and a folder of 300
    training and 60 test sample reviews -> (config path, NSMC folder)."""
    config = tmp_path / "micro.json"
    config.write_text(json.dumps({**MICRO, "max_position_embeddings": 128}))
    nsmc = tmp_path / "nsmc"
    nsmc.mkdir()
    for name, n in (("ratings_train.txt", 300), ("ratings_test.txt", 60)):
        nsmc_head(nsmc / name, n, name)
    return str(config), str(nsmc)


def wiki_head(dst, n):
    """The first n articles of the sample Wikipedia text, as WikiExtractor wrote them, to dst -> its path."""
    import lzma

    with lzma.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
        docs = f.read().split("</doc>\n")[:n]
    with open(dst, "w", encoding="utf-8") as f:
        f.write("</doc>\n".join(docs) + "</doc>\n")
    return str(dst)


def run_cli(*args, timeout=300):
    """Run a script as a user would (`run_cli("train.py", ...)`) -> (exit code, stdout + stderr)."""
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    return p.returncode, p.stdout + p.stderr


def torchrun(script, args, n=2, ok=True, **env):
    """torchrun --standalone with n CPU processes, one thread each; asserts the exit status -> stdout."""
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


def wait_for(path, proc, timeout=120, log=None):
    """Wait until `path` exists while `proc` (a Popen) runs; its output (or the file `log`) if it stops first."""
    t = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(log.read_text() if log else proc.communicate())
        assert time.time() - t < timeout
        time.sleep(0.02)


def assert_same_state(a, b):
    """Two checkpoints at the same step with the same weights and Adam moments, to the bit."""
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])
