"""gpu_check.sh, issue 18's one GPU script, run on the CPU with a micro model and a tiny bench: the quickstart's
stages, the 1-process torchrun that resumes their checkpoint, and every bench, with their figures collected."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, gpu_script_inputs, wiki_head


def check(run, **env):
    """gpu_check.sh on the CPU into the folder run, with these settings -> the finished process."""
    return subprocess.run(
        ["bash", "gpu_check.sh"],
        cwd=ROOT,
        env={**os.environ, "GPU": "", "RUN": str(run), "PY": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_gpu_check_dry_run_on_cpu(tmp_path):
    pytest.importorskip("transformers")  # the benches race transformers' BERT
    config, nsmc = gpu_script_inputs(tmp_path)
    run = tmp_path / "run"
    p = check(
        run,
        CONFIG=config,
        WIKI=wiki_head(tmp_path / "wiki.txt", 60),
        N=nsmc,
        VOCAB_SIZE="2500",
        EPOCH="1",
        BENCHES=f"{config}:64",
        STEPS="1",
        PREDICT_REVIEWS="40",
        OMP_NUM_THREADS="1",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # stage 1 ran pretraining, fine-tuning and predict; stage 2's torchrun went on from its checkpoint to epoch 2
    log = (run / "log.txt").read_text()
    torchrun = log[log.index("torch.distributed.run") :]
    assert "resuming from" in torchrun and "epoch 2: saved" in torchrun and "이 영화 정말 재밌어요" in log
    # the figures: the machine, the fine-tuned model's test accuracy, and each bench's closing lines
    figures = (run / "figures.txt").read_text()
    assert "torch " in figures.splitlines()[1] and "test accuracy" in figures
    assert figures.count("speedup vs transformers: ") == 1  # the pretraining bench (one in BENCHES)
    assert "finetune: median of the per-step ratios" in figures and "predict: ours " in figures
    assert figures.count("MFU") >= 4  # ours and transformers, pretraining and fine-tuning
    assert figures.rstrip().splitlines()[-1].startswith("gpu_check.sh done in ")
    # a second check into the same folder is refused (its figures would mix with the first one's)
    again = check(run)
    assert again.returncode == 2 and "is not empty" in again.stderr and again.stdout == ""
