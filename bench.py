"""Training speed: our BERT against transformers' on the same batches, alternated in one run.

    python bench.py                          # pretraining step, config_half, T 128, B 32 (needs transformers)
    python bench.py --task finetune          # fine-tuning step on NSMC reviews (length-bucketed batches of 128)
    python bench.py --task data              # data.py throughput on the bundled sample
    python bench.py --task memory            # peak RSS of pretrain.py on 1x and 10x the instances
    python bench.py --task curve             # loss curves of the fast and the plain path, same batches and init
    python bench.py --task all               # all but curve; the pretraining line comes last
    python bench.py --gpu 0                  # the same on a GPU
    python bench.py --plain                  # our plain path (nn.Dropout, SDPA dropout, separate q/k/v)

Each model trains in its best mode here: bf16 autocast where the hardware has it, SDPA attention
for transformers, AdamW (fused on a GPU) with gradient clipping for both. Full steps (forward,
backward, clip, optimizer step) alternate ours / theirs on the same batch after a warm-up; the
figures are medians of the per-step tokens/s (tokens = batch x padded length, the same for both).
The pretraining batches are real instances from data.py on the bundled Wikipedia sample, padded
to --seq. Last line: `speedup vs transformers: X.XXx (ours N tok/s, transformers M tok/s)`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import model as ours_model
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, configure_optimizer
from nsmc import collate_reviews, encode_reviews, length_batches, read_nsmc
from store import PretrainStore, collate_pretrain
from training import get_device, mixed_precision
from vocab import load_vocab

ROOT = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(ROOT, "data", "sample")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pretrain", choices=["pretrain", "finetune", "data", "memory", "curve", "all"])
    p.add_argument("--config", default="config_half.json")
    p.add_argument(
        "--seq", type=int, default=128, help="pretraining sequence length (instances made with data.py --n_seq SEQ)"
    )
    p.add_argument("--batch", type=int, default=32, help="pretraining batch")
    p.add_argument("--ft_batch", type=int, default=128, help="fine-tuning batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: every core); 1 times steps in thread CPU time"
    )
    p.add_argument("--fp32", action="store_true", help="both models in fp32")
    p.add_argument("--plain", action="store_true", help="our plain path, without the training speed paths of model.py")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile our model (the first steps' compile time is reported)"
    )
    p.add_argument("--no_hf", action="store_true", help="time ours only (no transformers needed)")
    p.add_argument("--curve_steps", type=int, default=200, help="steps of each path for --task curve")
    p.add_argument("--reviews", default=os.path.join(SAMPLE, "ratings_train.txt"), help="NSMC file for --task finetune")
    p.add_argument("--work", default="runs/bench", help="vocabulary and instances made from the sample are kept here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run(cmd):
    r = subprocess.run([sys.executable, *cmd], check=False, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"`python {' '.join(cmd)}` failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout + r.stderr


def prepare(args):
    """A vocabulary of 8,000 + 7 pieces and data.py instances of up to --seq tokens, from the bundled sample (once)."""
    os.makedirs(args.work, exist_ok=True)
    vocab = os.path.join(args.work, "sample8k.model")
    if not os.path.exists(vocab):
        run(
            [
                "vocab.py",
                "--input",
                os.path.join(SAMPLE, "kowiki-sample.txt.xz"),
                "--prefix",
                vocab[:-6],
                "--vocab_size",
                "8000",
            ]
        )
    inst = os.path.join(args.work, f"instances{args.seq}.json")
    if not os.path.exists(inst):
        run(
            [
                "data.py",
                "--input",
                os.path.join(SAMPLE, "kowiki-sample.txt.xz"),
                "--vocab",
                vocab,
                "--output",
                inst,
                "--n_seq",
                str(args.seq),
            ]
        )
    return vocab, inst


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_hf(kind, config, device, state):
    """transformers' model of the same config and weights, SDPA attention."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf_config = transformers.BertConfig(**config.to_dict(), attn_implementation="sdpa")
    m = getattr(transformers, kind)(hf_config)
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)
    return m.to(device).train()


def race(models, batches, n_tokens, args, device, autocast):
    """Alternate full training steps of each model on the same batches; -> {name: [tokens/s per timed step]}."""
    # with one thread on the CPU, that thread's CPU time: other jobs on the machine barely change it
    clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    rates = {name: [] for name in models}
    first = {}
    for i, batch in enumerate(batches):
        for name, (m, opt, loss_fn) in models.items():
            sync(device)
            t0, wall0 = clock(), time.perf_counter()
            with autocast:
                loss = loss_fn(m, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)  # the one host sync per step: timing needs it, training does not
            dt = clock() - t0
            first.setdefault(name, time.perf_counter() - wall0)  # wall time: torch.compile works in other processes too
            if i >= args.warmup:
                rates[name].append(n_tokens(batch) / dt)
    return rates, first


def report(rates, first, what, unit="tok/s"):
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        q = np.percentile(r, [25, 75])
        print(
            f"{what} {name:>12}: median {med[name]:,.0f} {unit} (IQR {q[0]:,.0f}-{q[1]:,.0f}; first step {first[name]:.1f} s wall)"
        )
    if (
        len(rates) == 2
    ):  # neighbouring steps see about the same load from other jobs: a steadier ratio on a shared machine
        pairs = [a / b for a, b in zip(*rates.values())]
        print(f"{what}: median of the per-step ratios ours/transformers {statistics.median(pairs):.2f}x")
    return med


def setup(args, device):
    if args.plain:
        ours_model.FAST = False
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(args.seed)


def maybe_compile(m, args):
    return torch.compile(m) if args.compile else m


def bench_pretrain(args, device):
    autocast, _, precision = mixed_precision(device, args.fp32)
    vocab, inst = prepare(args)
    config = BertConfig.from_json_file(args.config, vocab_size=load_vocab(vocab).get_piece_size())
    store = PretrainStore(inst)
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(args.warmup + args.steps):
        b = collate_pretrain([store[int(i)] for i in rng.choice(len(store), args.batch, replace=False)])
        pad = args.seq - b["input_ids"].size(1)
        for k in ("input_ids", "token_type_ids", "attention_mask"):
            b[k] = F.pad(b[k], (0, pad))
        full = torch.full_like(b["input_ids"], -100)  # transformers wants labels at every position
        b["full_labels"] = full.scatter_(1, b["mask_pos"], b["mask_label"])  # pad slots put -100 at [CLS], never masked
        batches.append({k: v.to(device) for k, v in b.items()})

    def ours_loss(m, b):
        mlm, nsp = m(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["mask_pos"])
        return F.cross_entropy(
            mlm.float().flatten(0, 1), b["mask_label"].flatten(), ignore_index=-100
        ) + F.cross_entropy(nsp.float(), 1 - b["is_next"])

    def hf_loss(m, b):
        out = m(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"])
        return F.cross_entropy(
            out.prediction_logits.float().flatten(0, 1), b["full_labels"].flatten(), ignore_index=-100
        ) + F.cross_entropy(out.seq_relationship_logits.float(), 1 - b["is_next"])

    ours = BertForPreTraining(config).to(device).train()
    models = {"ours": (maybe_compile(ours, args), configure_optimizer(ours, 1e-4, device_type=device.type), ours_loss)}
    if not args.no_hf:
        hf = make_hf("BertForPreTraining", config, device, ours.state_dict())
        models["transformers"] = (hf, configure_optimizer(hf, 1e-4, device_type=device.type), hf_loss)
    print(
        f"pretraining step: {args.config}, seq {args.seq}, batch {args.batch}, {precision} on {device}, "
        f"{'plain' if args.plain else 'fast'} path{', compiled' if args.compile else ''}; {args.steps} timed steps each, alternating"
    )
    rates, first = race(models, batches, lambda b: b["input_ids"].numel(), args, device, autocast)
    return report(rates, first, "pretrain")


def bench_finetune(args, device):
    autocast, _, precision = mixed_precision(device, args.fp32)
    vocab, _ = prepare(args)
    sp = load_vocab(vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    reviews, labels = read_nsmc(args.reviews)
    ids = encode_reviews(sp, reviews, min(128, config.max_position_embeddings))
    lengths = np.array([len(x) for x in ids])
    order = length_batches(lengths, args.ft_batch, np.random.default_rng(args.seed))[: args.warmup + args.steps]
    batches = [
        {k: v.to(device) for k, v in collate_reviews([ids[i] for i in idx], [labels[i] for i in idx]).items()}
        for idx in order
    ]

    def ours_loss(m, b):
        return F.cross_entropy(m(b["input_ids"], attention_mask=b["attention_mask"]).float(), b["labels"])

    def hf_loss(m, b):
        return F.cross_entropy(
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float(), b["labels"]
        )

    ours = BertForSequenceClassification(config).to(device).train()
    models = {"ours": (maybe_compile(ours, args), configure_optimizer(ours, 5e-5, device_type=device.type), ours_loss)}
    if not args.no_hf:
        hf = make_hf("BertForSequenceClassification", config, device, ours.state_dict())
        models["transformers"] = (hf, configure_optimizer(hf, 5e-5, device_type=device.type), hf_loss)
    print(
        f"fine-tuning step: {args.config}, NSMC reviews of {os.path.basename(args.reviews)} in length-bucketed batches of "
        f"{args.ft_batch} (mean padded length {statistics.mean(b['input_ids'].size(1) for b in batches):.0f}), {precision} on {device}"
    )
    rates, first = race(models, batches, lambda b: len(b["labels"]), args, device, autocast)
    med = report(rates, first, "finetune", "reviews/s")
    for name, r in med.items():
        print(f"finetune {name:>12}: one NSMC epoch (150,000 reviews) ~ {150000 / r / 60:.1f} min at the median rate")
    return med


def bench_data(args):
    vocab, _ = prepare(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = run(
            [
                "data.py",
                "--input",
                os.path.join(SAMPLE, "kowiki-sample.txt.xz"),
                "--vocab",
                vocab,
                "--output",
                os.path.join(tmp, "i.json"),
                "--n_seq",
                str(args.seq),
            ]
        )
    print("data.py: " + [line for line in out.splitlines() if line.startswith("wrote")][-1])


def peak_rss_mb(cmd):
    """Run `python cmd...` and return its peak resident memory in MB (this child's own, from wait4)."""
    p = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise UserError(
            f"`python {' '.join(cmd)}` failed: {(p.stderr.read().decode().strip().splitlines() or ['?'])[-1]}"
        )
    return usage.ru_maxrss / 1024


def bench_memory(args):
    """Peak RSS of pretrain.py over --steps steps on the sample's instances, and on 10 copies of them."""
    vocab, inst = prepare(args)
    big = os.path.join(args.work, f"instances{args.seq}_x10.json")
    if not os.path.exists(big):
        with open(inst, "rb") as f:
            data = f.read()
        with open(big, "wb") as f:
            f.write(data * 10)
    rss = {}
    for path in (inst, big):
        store = PretrainStore(path)  # builds the memory-mapped cache now, so the run below only trains
        with tempfile.TemporaryDirectory() as tmp:
            rss[path] = peak_rss_mb(
                [
                    "pretrain.py",
                    "--config",
                    args.config,
                    "--vocab",
                    vocab,
                    "--input",
                    path,
                    "--save",
                    os.path.join(tmp, "p.pth"),
                    "--log_dir",
                    tmp,
                    "--batch",
                    str(args.batch),
                    "--max_steps",
                    str(args.steps),
                    "--epoch",
                    "1",
                ]
            )
        print(
            f"memory: pretrain.py, {len(store):,} instances ({os.path.getsize(path) / 1e6:.0f} MB of JSON), "
            f"{args.steps} steps of batch {args.batch}: peak RSS {rss[path]:.0f} MB"
        )
    a, b = rss.values()
    print(f"memory: 10x the instances -> {b / a:.2f}x the peak RSS")


def bench_curve(args, device):
    """Pretrain from the same init on the same batches with the fast and the plain path; MLM and NSP loss every 25 steps."""
    autocast, _, precision = mixed_precision(device, args.fp32)
    vocab, inst = prepare(args)
    config = BertConfig.from_json_file(args.config, vocab_size=load_vocab(vocab).get_piece_size())
    store = PretrainStore(inst)
    order = np.random.default_rng(args.seed).permutation(len(store))
    every = max(1, args.curve_steps // 10)
    curves = {}
    for path in ("fast", "plain"):
        ours_model.FAST = path == "fast"
        torch.manual_seed(args.seed)
        m = BertForPreTraining(config).to(device).train()
        opt = configure_optimizer(m, 5e-4, device_type=device.type)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
        sums, rows, t0 = torch.zeros(2), [], time.perf_counter()
        for step in range(args.curve_steps):
            idx = order[(step * args.batch) % len(order) :][: args.batch]
            b = {k: v.to(device) for k, v in collate_pretrain([store[int(i)] for i in idx]).items()}
            with autocast:
                mlm, nsp = m(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["mask_pos"])
            mlm_loss = F.cross_entropy(mlm.float().flatten(0, 1), b["mask_label"].flatten(), ignore_index=-100)
            nsp_loss = F.cross_entropy(nsp.float(), 1 - b["is_next"])
            (mlm_loss + nsp_loss).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            sums += torch.stack([mlm_loss.detach(), nsp_loss.detach()]).cpu()
            if (step + 1) % every == 0:
                rows.append((sums / every).tolist())
                sums.zero_()
        curves[path] = rows
        print(f"curve {path}: {args.curve_steps} steps in {time.perf_counter() - t0:.0f} s")
    ours_model.FAST = not args.plain
    print(
        f"curve: {args.config}, batch {args.batch}, {precision} on {device}, lr 5e-4 (20 warmup steps); mean loss per {every} steps"
    )
    print("| steps | MLM loss fast | MLM loss plain | NSP loss fast | NSP loss plain |")
    print("|---|---|---|---|---|")
    for i, (f, p) in enumerate(zip(curves["fast"], curves["plain"])):
        print(f"| {i * every + 1}-{(i + 1) * every} | {f[0]:.3f} | {p[0]:.3f} | {f[1]:.3f} | {p[1]:.3f} |")


def main(argv=None):
    args = get_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.ft_batch < 1 or args.curve_steps < 1:
        raise UserError("--steps, --batch, --ft_batch and --curve_steps must be at least 1 and --warmup at least 0")
    require_file(args.config, "pass --config config_half.json or config.json")
    device = get_device(args.gpu)
    setup(args, device)
    if args.task in ("data", "all"):
        bench_data(args)
    if args.task in ("memory", "all"):
        bench_memory(args)
    if args.task in ("finetune", "all"):
        bench_finetune(args, device)
    if args.task == "curve":
        bench_curve(args, device)
    if args.task in ("pretrain", "all"):
        med = bench_pretrain(args, device)
        if "transformers" in med:
            print(
                f"speedup vs transformers: {med['ours'] / med['transformers']:.2f}x "
                f"(ours {med['ours']:,.0f} tok/s, transformers {med['transformers']:,.0f} tok/s)"
            )


if __name__ == "__main__":
    main_guard(main)
