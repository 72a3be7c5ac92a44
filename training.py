"""Pieces both training scripts share: device and precision choice, the LR schedule, CSV logs and plots."""
import contextlib
import csv
import os
import random

import numpy as np
import torch

from errors import UserError


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(gpu):
    if gpu is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--gpu {gpu} given but no CUDA GPU is available; leave out --gpu to train on the CPU")
    if gpu >= torch.cuda.device_count():
        raise UserError(f"--gpu {gpu} given but only {torch.cuda.device_count()} GPU(s) are visible")
    torch.cuda.set_device(gpu)
    return torch.device("cuda", gpu)


def cpu_has_bf16():
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mixed_precision(device, fp32=False):
    """(autocast context, grad scaler or None, name): bf16 where the hardware has it, fp16 + scaler on older GPUs."""
    if fp32:
        return contextlib.nullcontext(), None, "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16), None, "bf16"
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda"), "fp16"
    if cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16), None, "bf16"
    return contextlib.nullcontext(), None, "fp32"


def linear_warmup_decay(step, warmup_steps, total_steps):
    """LR multiplier: 0 -> 1 over warmup_steps, then linearly down to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def train_step(model, optimizer, scheduler, scaler, loss, clip):
    """backward, clip, step; with a grad scaler when training in fp16."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def append_csv(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def plot_csv(csv_path, svg_path, x, ys, ylabel):
    """Draw columns `ys` of a CSV log against column `x` into an SVG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for y in ys:
        if y in df:
            ax.plot(df[x], df[y], marker="." if len(df) < 50 else None, label=y)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(svg_path)
    plt.close(fig)
