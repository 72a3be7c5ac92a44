"""Pieces both training scripts share: device and precision choice, torchrun set-up, the optimizer step,
RNG states for exact resume, the LR schedule, CSV logs and plots."""

import contextlib
import csv
import ctypes
import functools
import os
import random
import signal
import sys
import threading
import warnings

import numpy as np
import torch
import torch.distributed as dist

from errors import UserError
from model import thread_generator


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


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags: the `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo; empty where there is
    none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_model(path="/proc/cpuinfo"):
    """The CPU's name, with its x86 family and model numbers where /proc/cpuinfo has them: a virtual machine's
    name is often just "AMD EPYC", and the family tells Zen 3 (25) from Zen 5 (26)."""
    info = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor is enough
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    for key in ("model name", "Model", "CPU part"):
        if key in info:
            if "cpu family" in info and "model" in info:
                return f"{info[key]} (family {info['cpu family']}, model {info['model']})"
            return info[key]
    import platform

    return platform.processor() or "unknown CPU"


def matrix_isa(flags=None):
    """The widest matrix instructions the CPU has: AMX, AVX-512, AVX2 (x86), NEON/SVE (ARM), or 'other'."""
    flags = cpu_flags() if flags is None else flags
    for isa, flag in (("AMX", "amx_bf16"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512", "avx512f"), ("AVX2", "avx2"),
                      ("SVE", "sve"), ("NEON", "asimd")):
        if flag in flags:
            return isa
    return "other"


def isa_caps():
    """The instruction sets the kernels are held to, where an environment variable caps them below what the CPU
    has (ONEDNN_MAX_CPU_ISA for oneDNN, ATEN_CPU_CAPABILITY for torch's own kernels, MKL_ENABLE_INSTRUCTIONS for
    MKL, FBGEMM_ENABLE_INSTRUCTIONS for fbgemm's int8 ones, predict.py --int8's on CPUs with native bf16): an
    AVX-512 machine run as an AVX2 one says so. Empty when nothing is capped."""
    names = {
        "ONEDNN_MAX_CPU_ISA": "oneDNN",
        "ATEN_CPU_CAPABILITY": "ATen",
        "MKL_ENABLE_INSTRUCTIONS": "MKL",
        "FBGEMM_ENABLE_INSTRUCTIONS": "fbgemm",
    }
    return ", ".join(f"{name} {os.environ[var]}" for var, name in names.items() if os.environ.get(var))


def cpu_has_bf16(flags=None):
    """bf16 matrix products in hardware: AMX or AVX512_BF16 on x86, the bf16 extension on ARM. oneDNN also runs
    bf16 on AVX2-only and plain AVX-512 CPUs, emulated and orders of magnitude slower than fp32 (a 2048x2048
    matmul did not finish in ten minutes on a Zen 3), so there the answer is no, whatever oneDNN says."""
    flags = cpu_flags() if flags is None else flags
    native = bool({"amx_bf16", "avx512_bf16", "bf16"} & flags)
    return native and torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


@functools.cache  # looked up once: release_free_memory runs at every evaluation
def glibc():
    """glibc, for its allocator's knobs (malloc_trim, mallopt); None elsewhere (macOS, musl, Windows)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_free_memory():
    """Give the heap pages that freed tensors left behind back to the system (glibc's malloc_trim; a no-op
    elsewhere). glibc keeps them for reuse, but evaluation's tensors have other shapes than training's, so
    without this the two phases' peaks add up: a full NSMC fine-tuning run reached 1.9 GB instead of 1.2."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory():
    """Let glibc keep the heap pages that freed tensors leave, for the next step, instead of handing them back to
    the system and faulting them in again: no trimming of the heap top (M_TRIM_THRESHOLD) and tensors up to 32 MB
    (glibc's largest threshold) from the heap instead of a fresh mmap each (M_MMAP_THRESHOLD). A pretraining step
    of config_half made 45,000-80,000 page faults and spent 0.1-0.26 s in the kernel without it; with it, 7-15%
    more tokens/s on the CPU (docs/speed.md); predict.py's --int8 1.03-1.29x faster. release_free_memory still
    returns everything. True where it took effect (glibc), False elsewhere."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    libc = glibc()
    if libc is None:
        return False
    return libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1


def padded_length(longest, n_seq=None, multiple=16):
    """The padded length of a batch whose longest item has `longest` tokens: rounded up to a multiple of `multiple`
    within n_seq (the longest allowed), so that a run meets few batch shapes (the CPU's bf16 kernels are built and
    cached per shape); `longest` itself when n_seq is None."""
    return min(-(-longest // multiple) * multiple, max(longest, n_seq)) if n_seq else longest


def pad_multiple(device, precision):
    """What predict.py rounds padded lengths up to (padded_length's `multiple`): 16 where kernels are built per
    shape (oneDNN's bf16 ones on a CPU; GPUs' tensor cores want multiples of 8), 1 in fp32 on a CPU, where the
    rounding was a quarter more tokens for NSMC's ~26-token reviews (1.23x faster without it on a Zen 3).
    train.py keeps 16: with 1, more batch shapes grew its evaluation's RSS to 2.2 GB (docs/speed.md)."""
    return 1 if device.type == "cpu" and precision == "fp32" else 16


def linear_warmup_decay(step, warmup_steps, total_steps):
    """LR multiplier: 0 -> 1 over warmup_steps, then linearly down to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def setup_distributed(gpu):
    """-> (rank, world size, device). torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is
    one process as before. Under torchrun `--gpu` (any index) turns GPUs on and process LOCAL_RANK takes
    GPU LOCAL_RANK (NCCL); without it every process runs on the CPU (gloo)."""
    if "RANK" not in os.environ:
        return 0, 1, get_device(gpu)
    die_with_agent()
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    device = get_device(local_rank) if gpu is not None else torch.device("cpu")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
    )
    return rank, world, device


def die_with_agent():
    """Under torchrun: have the kernel SIGKILL this worker as soon as its parent, torchrun's agent, dies. torch
    starts its workers in sessions of their own, so a SIGKILL to torchrun or to its process group (`kill -9`, the
    out-of-memory killer) would leave them training and writing --save, racing the rerun that resumes from it.
    SIGKILL, not SIGTERM: a worker whose agent is gone writes nothing more, and the rerun resumes from the last
    whole checkpoint. (SIGTERM to torchrun itself is forwarded by torchrun to the workers, which save and exit.)
    Linux only (prctl); elsewhere nothing changes. The signal follows the thread that started the worker, which
    in torchrun is its main thread, so it fires when the agent exits and not before."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return  # RANK set by hand: the parent is a shell, which may well exit before the run
    agent = os.getppid()
    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)) != 0:
        return
    if os.getppid() != agent:  # the agent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def finish_distributed(world):
    """Wait for every process, then close the process group. A rank that tears gloo down while another
    still finishes its epoch can die in gloo's threads (SIGABRT), so nobody leaves before the others."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def all_sum(t, world):
    """Sum a tensor over all processes (in place); a no-op for one process."""
    if world > 1:
        dist.all_reduce(t)
    return t


def rank0_first(fn, rank, world):
    """Run fn on rank 0 first (it builds caches the others then read), then on the rest. A one-line error
    on rank 0 stops every rank instead of leaving them waiting."""
    failed = None
    if rank == 0:
        try:
            out = fn()
        except UserError as e:
            failed = e
    if world > 1:
        flag = torch.tensor([failed is not None], dtype=torch.float32)
        dist.all_reduce(flag)  # gloo or NCCL alike: every rank waits here for rank 0
        if flag.item() and rank != 0:
            raise UserError("rank 0 stopped (its error is above)")
    if failed is not None:
        raise failed
    return out if rank == 0 else fn()


def rank0_only(fn, rank, world):
    """Run fn on rank 0 alone (the others wait for it); its one-line error stops every rank."""
    return rank0_first(lambda: fn() if rank == 0 else None, rank, world)


def split_step(global_batch, rank, world, accum, lengths=None):
    """The micro-batches one process trains on in one optimizer step: rank r takes items r::world of the
    global batch, cut into `accum` parts. So N processes with batch B see together what one process with
    batch N*B sees. The caller keeps global batches of at least world * accum items (no empty part).

    With `lengths` (of every item) a process's items are sorted by length before they are cut, so that each
    micro-batch pads to a length near its own items': the step's gradient is the sum over its items whatever
    the cut, so the step is the same step, for less work when lengths vary (one review to an instance)."""
    share = np.asarray(global_batch[rank::world])
    if lengths is not None:
        share = share[np.argsort(lengths[share], kind="stable")]
    return [list(part) for part in np.array_split(share, accum)]


class StopSignal:
    """SIGINT/SIGTERM set a flag instead of killing the process; the training loop checks it between
    steps (all ranks together), saves and exits."""

    def __init__(self):
        self.signum = 0
        self.before = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        self.signum = signum

    def save_and_exit(self, save, path, step, log):
        """Save, say so in one line and exit with 128 + the signal's number, as a shell does."""
        save()
        signum = self.signum or signal.SIGTERM
        log(
            f"{signal.Signals(signum).name}: saved {path} at step {step}; run the same command to resume",
            file=sys.stderr,
        )
        sys.exit(128 + signum)

    def restore(self):
        """Put back the handlers from before (main() may run inside another program, a test say)."""
        for s, h in self.before.items():
            signal.signal(s, h)


def ignore_sigint(worker_id):
    """DataLoader workers leave Ctrl-C to the training process, which saves and exits (a worker killed by it
    would make the DataLoader raise instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def step_threads(requested, device, world):
    """How many threads run a training step's micro-batches side by side (`side_by_side`): `requested`
    (--step_threads) or, left out, 2 on a CPU with 2+ threads; always 1 on a GPU and under torchrun, where
    the processes already share the cores."""
    if device.type != "cpu" or world > 1:
        return 1
    if requested:
        return requested
    return 2 if torch.get_num_threads() >= 2 else 1


# .grads in each thread of side_by_side: its share's gradient sums, which `backward` adds to
_share = threading.local()


def backward(loss, model):
    """loss.backward(); in a thread of side_by_side, into the thread's own sums instead, which side_by_side adds
    to .grad share by share. Threads adding into one .grad as they finish would group a step's sum by timing, and
    float addition is not associative: (a1 + b1) + a2 is not (a1 + a2) + b1 to the bit, so a run would not repeat
    (seen in 46 of 300 repeats of a 3-micro-batch step on 2 threads)."""
    sums = getattr(_share, "grads", None)
    if sums is None:
        loss.backward()
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
        if g is not None:
            sums[p] = sums[p].add_(g) if p in sums else g


def side_by_side(step, parts, threads):
    """step(some parts) -> a tensor of summed counts; run it on `threads` shares of a step's micro-batches (dicts
    of batch-first tensors) at once, each share in a thread of its own with its share of the cores, and add up
    what they return. At config_half's sizes one op does not keep two cores busy: on 2 cores pretrain.py's step
    of 8 micro-batches of 16 one-review instances ran 1.22-1.32x faster as two shares on one core each; a
    fine-tuning epoch (train.py, batch 64) was no faster, so train.py keeps 1 by default (docs/speed.md).

    The step's backward passes go through `backward`, so each thread sums its share's gradients apart, and they
    are added to .grad in share order when all are done: the step's gradient, as one micro-batch after the other
    gives it up to rounding (the callers normalize the loss over the whole step), so it is the same step. A share
    is a set of whole micro-batches, balanced by tokens; with fewer micro-batches than threads each is cut along
    the batch. Each thread draws its dropout masks from its own generator, seeded from torch's default one, and
    the sums are added in a fixed order, so a run, and a resumed one, does not depend on how the threads
    interleave."""
    if threads <= 1:
        return step(parts)
    if len(parts) < threads:  # cut along the batch; a batch smaller than `threads` gives fewer pieces
        parts = [
            {k: v[i::threads] for k, v in b.items()} for b in parts for i in range(min(threads, len(b["input_ids"])))
        ]
    shares, load = [[] for _ in range(threads)], [0] * threads
    for b in sorted(parts, key=lambda b: -b["input_ids"].numel()):  # the largest first, to the least loaded
        k = load.index(min(load))
        shares[k].append(b)
        load[k] += b["input_ids"].numel()
    shares = [s for s in shares if s]
    seeds = torch.randint(2**62, (len(shares),)).tolist()
    out, errors, sums = [None] * len(shares), [], [{} for _ in shares]

    def work(k):
        _share.grads = sums[k]
        try:
            with thread_generator(torch.Generator().manual_seed(seeds[k])):
                out[k] = step(shares[k])
        except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
            errors.append(e)
        finally:
            _share.grads = None

    n = torch.get_num_threads()
    torch.set_num_threads(max(1, n // len(shares)))  # a new thread takes the count set when it starts its first op
    try:
        workers = [threading.Thread(target=work, args=(k,)) for k in range(len(shares))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(n)
    if errors:
        raise errors[0]
    for grads in sums:  # share 0's sums, then share 1's, ...: one order whichever thread finished first
        for p, g in grads.items():
            p.grad = g if p.grad is None else p.grad.add_(g)
    return sum(out[1:], out[0])


def optimizer_step(model, optimizer, scheduler, scaler, clip):
    """Clip and step after the backward passes of one step; with a grad scaler when training in fp16.
    -> False when the gradient norm is NaN/inf (from a NaN/inf loss): the weights are left as they
    were. Gradients are already summed across processes, so every rank sees the same norm and skips
    together. The scheduler steps either way, so that the LR follows the step count."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    finite = bool(torch.isfinite(norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips by itself on inf/NaN gradients
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" when the first step is skipped
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
    return finite


def stop_bad_steps(step, bad_steps, path, what):
    """Stop a run after --max_bad_steps NaN/inf losses in a row, saying where its last good weights are: skipped
    steps leave the weights alone, so the last checkpoint at `path` holds good ones."""
    if os.path.exists(path):
        kept = f"{path} (step {torch.load(path, weights_only=True)['step']}) holds the last good weights"
    else:
        kept = f"no {what} was written yet"
    raise UserError(
        f"stopped at step {step}: {bad_steps} NaN/inf losses in a row (--max_bad_steps); {kept}; "
        "lower --lr or check the data"
    )


def get_rng_state():
    """torch, CUDA, numpy and Python RNG states as tensors and lists, which torch.load(weights_only=True) reads back."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    # CUDA: the current GPU's generator only (asking for all would start a CUDA context on every GPU in every process)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(py_state), py_gauss],
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def gather_rng_states(world):
    """Every rank's RNG states (dropout masks differ per rank), as a list indexed by rank."""
    mine = get_rng_state()
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def truncate_csv(path, column, last):
    """Drop the rows of a CSV log whose `column` is above `last`: on resume, rows logged after the checkpoint come
    again."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if float(r[column]) <= last)


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
