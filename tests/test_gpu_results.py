"""gpu_results.sh, the GPU row's one script, run on the CPU with a tiny budget and a micro model: the timed
step counts, wiki then TAPT pretraining, the seeds fine-tuned side by side, and one table over all of them."""

import csv
import fcntl
import os
import re
import subprocess
import sys

from conftest import ROOT, gpu_script_inputs, wiki_head


def test_gpu_results_script_dry_run_on_cpu(tmp_path):
    config, nsmc = gpu_script_inputs(tmp_path)
    run = tmp_path / "run"
    env = {
        **os.environ,
        "GPU": "",
        "BUDGET_S": "2",
        "CONFIG": config,
        "EPOCH": "1",
        "SEEDS": "1,2",
        "WORKERS": "0",
        "WIKI": wiki_head(tmp_path / "wiki.txt", 60),
        "N": nsmc,
        "RUN": str(run),
        "OMP_NUM_THREADS": "1",
        "PY": sys.executable,  # the interpreter running the tests, not whichever python is first on PATH
    }
    p = subprocess.run(
        ["bash", "gpu_results.sh", "--vocab_size", "2500", "--hardware", "test CPU"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    w, t = map(int, re.search(r"budget 2 s: (\d+) steps on Wikipedia, then (\d+) on the NSMC", p.stdout).groups())
    # the two pretraining runs went for the timed step counts, the TAPT one from the wiki weights
    for log_dir, steps in (("pretrain_wiki", w), ("pretrain_wiki+nsmc", t)):
        with open(run / log_dir / "log.csv") as f:
            assert int(list(csv.DictReader(f))[-1]["step"]) == steps
    assert "starting from the weights of" in (run / "pretrain_wiki+nsmc.log").read_text()
    # both seeds ran (side by side, each its own results.py) and the last call put them in one table row
    assert (run / "seed1.log").exists() and (run / "seed2.log").exists()
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["item"], r["seed"]) for r in rows] == [(f"wiki {w} + nsmc {t}", "1"), (f"wiki {w} + nsmc {t}", "2")]
    table = (run / "results.md").read_text().splitlines()
    assert (
        len(table) == 3
        and table[2].startswith(f"| wiki {w} + nsmc {t} |")
        and "(2 seeds; lr 3e-4, batch 64)" in table[2]
    )
    assert "test CPU" in table[2] and not list(run.glob("*.tmp"))


def test_a_second_gpu_results_on_one_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "gpu_results.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a first gpu_results.sh on this RUN holds it
        p = subprocess.run(
            ["bash", "gpu_results.sh"],
            cwd=ROOT,
            # data that is not there: were the lock not taken, the script would stop at once on the missing files
            env={**os.environ, "RUN": str(run), "GPU": "", "WIKI": str(tmp_path / "none"), "N": str(tmp_path / "none")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == f"error: {run} is in use by another gpu_results.sh; wait for it or pass another RUN"
