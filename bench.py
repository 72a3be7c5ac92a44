"""Training speed: our BERT against transformers' on the same batches, alternated in one run.

    python bench.py                          # pretraining step, config_half, T 128, B 32 (needs transformers)
    python bench.py --task finetune          # fine-tuning step on NSMC reviews (length-bucketed batches of 128)
    python bench.py --task data              # data.py throughput on the bundled sample
    python bench.py --task memory            # peak RSS of pretrain.py on 1x and 10x the instances
    python bench.py --task curve             # loss curves of the fast and the plain path, same batches and init
    python bench.py --task predict           # predict.py against today's baseline and transformers' pipeline
    python bench.py --task all               # all but curve; the pretraining line comes last
    python bench.py --gpu 0                  # the same on a GPU
    python bench.py --plain                  # our plain path (nn.Dropout, SDPA dropout, separate q/k/v)

Each model trains in its best mode here: bf16 autocast where the hardware has it, SDPA attention
for transformers, AdamW (fused on a GPU) with gradient clipping for both. Full steps (forward,
backward, clip, optimizer step) alternate ours / theirs on the same batch after a warm-up; the
figures are medians of the per-step tokens/s (tokens = batch x padded length, the same for both).
The pretraining batches are real instances from data.py on the bundled Wikipedia sample, padded
to --seq. The fine-tuning batches are NSMC reviews padded as train.py pads them, and our step runs
each in train.py's parts (at most 2,048 padded tokens on a CPU; --ft_batch_tokens 0: whole).
Last line: `speedup vs transformers: X.XXx (ours N tok/s, transformers M tok/s)`.

The first lines say what it ran on: the CPU model and its matrix instructions (AVX2 / AVX-512 / AMX,
from /proc/cpuinfo) or the GPU, and the measured peak of a large matmul in each precision used; each
result then gives its model FLOPs utilisation (MFU): model FLOPs per token x tokens/s / that peak.
bf16 is used only where the hardware has it (training.cpu_has_bf16): AVX2-only CPUs run it emulated.
"""

import argparse
import copy
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
import nsmc
import predict
from checkpoint import save_checkpoint
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, configure_optimizer, flops_per_token
from nsmc import PAD_MULTIPLE, collate_reviews, encode_reviews, length_batches, read_nsmc, token_split
from store import PretrainStore, collate_pretrain
from training import (
    backward,
    cpu_flags,
    cpu_has_bf16,
    cpu_model,
    get_device,
    isa_caps,
    keep_freed_memory,
    matrix_isa,
    mixed_precision,
    side_by_side,
    step_threads,
)
from vocab import load_vocab

ROOT = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(ROOT, "data", "sample")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--task", default="pretrain", choices=["pretrain", "finetune", "predict", "data", "memory", "curve", "all"]
    )
    p.add_argument("--config", default="config_half.json")
    p.add_argument(
        "--seq", type=int, default=128, help="pretraining sequence length (instances made with data.py --n_seq SEQ)"
    )
    p.add_argument("--batch", type=int, default=32, help="pretraining batch")
    p.add_argument("--ft_batch", type=int, default=128, help="fine-tuning batch")
    p.add_argument(
        "--ft_pad_multiple", type=int, default=PAD_MULTIPLE,
        help="fine-tuning batches padded to their longest review rounded up to a multiple of this (16: as train.py "
        "pads them; 1: to the longest review)",
    )
    p.add_argument(
        "--ft_batch_tokens",
        type=int,
        default=None,
        help="ours: each fine-tuning batch cut in parts of at most this many padded tokens, as train.py cuts them "
        "(default: train.py's --batch_tokens, 2048 on a CPU, 0 on a GPU; 0: the batch in one piece); transformers "
        "takes the batch whole",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: every core); 1 times steps in thread CPU time"
    )
    p.add_argument(
        "--step_threads", type=int, default=None,
        help="ours: a step's batch in this many threads side by side, as train.py and pretrain.py run it "
        "(default as theirs: pretraining 2 on a CPU with 2+ threads, fine-tuning 1; 1: the step in one piece)",
    )
    p.add_argument("--fp32", action="store_true", help="both models in fp32")
    p.add_argument("--plain", action="store_true", help="our plain path, without the training speed paths of model.py")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile our model (the first steps' compile time is reported)"
    )
    p.add_argument("--no_hf", action="store_true", help="time ours only (no transformers needed)")
    p.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="pretrain/finetune: then N more steps of ours under torch.profiler, and its top ops by self CPU time",
    )
    p.add_argument("--curve_steps", type=int, default=200, help="steps of each path for --task curve")
    p.add_argument(
        "--reviews", default=os.path.join(SAMPLE, "ratings_train.txt"), help="NSMC file for --task finetune / predict"
    )
    p.add_argument("--predict_reviews", type=int, default=2000, help="reviews classified per round in --task predict")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each side in --task predict (median reported)")
    p.add_argument("--hf_batch", type=int, default=32, help="transformers pipeline's batch_size in --task predict")
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


def describe_machine(device):
    """One line: what the figures below were measured on."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"machine: {p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    caps, flags = isa_caps(), cpu_flags()
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} threads used), "
        f"matrix ISA {matrix_isa(flags)}" + (f" (kernels capped: {caps})" if caps else "") + ", "
        f"bf16 {'native' if cpu_has_bf16(flags) else 'not native: fp32'}, torch {torch.__version__}"
    )


def ran_in(precision):
    return "fp32" if precision == "fp32" else f"{precision} autocast"


_peaks = {}


def matmul_peak(device, precision, n=2048, windows=5, window_s=0.1):
    """Measured FLOP/s of an n x n matmul in `precision` (fp32 / bf16 / fp16) on this device, once per run: the best
    of `windows` timings of at least `window_s` each. One long average read 0.12 TFLOP/s where the best window
    reads 0.17-0.19 on a Zen 4 held to AVX2 (a VM's slow patches), which put an MFU line at 136%.
    Only precisions mixed_precision picked come here, so an emulated bf16 is never timed."""
    if precision not in _peaks:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
        for _ in range(2):
            a @ b  # warm-up: oneDNN builds its kernel
        rates, reps = [], 1
        while len(rates) < windows:
            sync(device)
            t0 = clock()
            for _ in range(reps):
                a @ b
            sync(device)
            seconds = clock() - t0
            if seconds < window_s:
                reps *= 2  # too short to time (a GPU does one in microseconds): a longer window
                continue
            rates.append(2 * n**3 * reps / seconds)
        _peaks[precision] = max(rates)
        tflops = _peaks[precision] / 1e12
        print(f"peak: {n}x{n} matmul in {precision}: {tflops:.2f} TFLOP/s measured (best of {windows})")
    return _peaks[precision]


def mfu_line(what, name, tokens_per_s, flops, device, precision):
    peak = matmul_peak(device, precision)
    print(
        f"{what} {name:>12}: {flops / 1e6:.1f} MFLOP/token x {tokens_per_s:,.0f} tok/s = "
        f"{flops * tokens_per_s / 1e12:.3f} TFLOP/s, MFU {flops * tokens_per_s / peak:.1%} of the {precision} peak"
    )


def make_hf(kind, config, device, state):
    """transformers' model of the same config and weights, SDPA attention."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf_config = transformers.BertConfig(**config.to_dict(), attn_implementation="sdpa")
    m = getattr(transformers, kind)(hf_config)
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)
    return m.to(device).train()


def plain_step(loss_fn, autocast):
    """forward and backward of a batch in one piece: loss_fn(m, batch) -> its mean loss."""

    def step(m, b):
        with autocast:
            loss = loss_fn(m, b)
        loss.backward()

    return step


def our_step(loss_fn, autocast, threads):
    """Our forward and backward as train.py and pretrain.py run them: the batch's parts (b["parts"], train.py's
    token_split; the batch itself when it has none) shared among `threads` threads side by side
    (training.side_by_side; one after the other when 1). loss_fn(m, piece, batch) -> the piece's share of the
    batch's mean loss, so the pieces' gradients add up to the batch's."""

    def pieces(m, b, share):
        for piece in share:
            with copy.copy(autocast):  # a context of its own in each thread
                loss = loss_fn(m, piece, b)
            backward(loss, m)
        return torch.zeros(1)

    return lambda m, b: side_by_side(lambda share: pieces(m, b, share), b.get("parts", [b]), threads)


def train_step(m, opt, step, batch):
    step(m, batch)
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def profile(models, batches, args, what):
    """--profile N: N more steps of ours under torch.profiler; where a step's time goes, by op."""
    if not args.profile:
        return
    m, opt, step = models["ours"]
    with torch.profiler.profile() as prof:
        for batch in (batches * args.profile)[: args.profile]:
            train_step(m, opt, step, batch)
    print(f"{what} ours, {args.profile} steps under torch.profiler, top ops by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def race(models, batches, n_tokens, args, device, threads=1):
    """Alternate full training steps of each model on the same batches; -> {name: [tokens/s per timed step]}."""
    # with one thread on the CPU, that thread's CPU time: other jobs on the machine barely change it
    one = device.type == "cpu" and torch.get_num_threads() == 1 and threads == 1
    clock = time.thread_time if one else time.perf_counter
    rates = {name: [] for name in models}
    first = {}
    for i, batch in enumerate(batches):
        # who goes first alternates: the first side to meet a new batch shape builds the kernels both then share
        # (oneDNN's per-shape cache on a CPU)
        for name, (m, opt, step) in list(models.items())[:: -1 if i % 2 else 1]:
            sync(device)
            t0, wall0 = clock(), time.perf_counter()
            train_step(m, opt, step, batch)
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
            f"{what} {name:>12}: median {med[name]:,.0f} {unit} (IQR {q[0]:,.0f}-{q[1]:,.0f}; "
            f"first step {first[name]:.1f} s wall)"
        )
    if (
        len(rates) == 2
    ):  # neighbouring steps see about the same load from other jobs: a steadier ratio on a shared machine
        pairs = [a / b for a, b in zip(*rates.values())]
        print(f"{what}: median of the per-step ratios ours/transformers {statistics.median(pairs):.2f}x")
        ours, theirs = ([1 / x for x in r] for r in rates.values())  # both sides ran the same batches
        print(f"{what}: summed step times transformers/ours {sum(theirs) / sum(ours):.2f}x (what a run takes)")
    return med


def setup(args, device):
    if args.plain:
        ours_model.FAST = False
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(args.seed)


def side_note(threads):
    return f"; ours in {threads} threads side by side (--step_threads), transformers in one" if threads > 1 else ""


def maybe_compile(m, args):
    return torch.compile(m) if args.compile else m


def bench_pretrain(args, device):
    autocast, _, precision = mixed_precision(device, args.fp32)
    if device.type == "cpu":
        keep_freed_memory()  # as pretrain.py does (glibc keeps freed pages); transformers' steps run under it too
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

    def ours_loss(m, p, b):  # piece p's share of batch b's mean losses
        mlm, nsp = m(p["input_ids"], p["token_type_ids"], p["attention_mask"], p["mask_pos"])
        mlm = F.cross_entropy(mlm.float().flatten(0, 1), p["mask_label"].flatten(), ignore_index=-100, reduction="sum")
        nsp = F.cross_entropy(nsp.float(), 1 - p["is_next"], reduction="sum")
        return mlm / (b["mask_label"] != -100).sum() + nsp / len(b["is_next"])

    def hf_loss(m, b):
        out = m(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"])
        return F.cross_entropy(
            out.prediction_logits.float().flatten(0, 1), b["full_labels"].flatten(), ignore_index=-100
        ) + F.cross_entropy(out.seq_relationship_logits.float(), 1 - b["is_next"])

    ours = BertForPreTraining(config).to(device).train()
    threads = step_threads(args.step_threads, device, 1)
    step = our_step(ours_loss, autocast, threads)
    models = {"ours": (maybe_compile(ours, args), configure_optimizer(ours, 1e-4, device_type=device.type), step)}
    if not args.no_hf:
        hf = make_hf("BertForPreTraining", config, device, ours.state_dict())
        models["transformers"] = (
            hf, configure_optimizer(hf, 1e-4, device_type=device.type), plain_step(hf_loss, autocast)
        )
    print(
        f"pretraining step: {args.config}, seq {args.seq}, batch {args.batch}, {ran_in(precision)} for both on "
        f"{device}, {'plain' if args.plain else 'fast'} path{', compiled' if args.compile else ''}"
        f"{side_note(threads)}; {args.steps} timed steps each, alternating"
    )
    rates, first = race(models, batches, lambda b: b["input_ids"].numel(), args, device, threads)
    med = report(rates, first, "pretrain")
    profile(models, batches, args, "pretrain")
    for name, r in med.items():
        mfu_line("pretrain", name, r, flops_per_token(config, args.seq), device, precision)
    return med


def bench_finetune(args, device):
    autocast, _, precision = mixed_precision(device, args.fp32)
    vocab, _ = prepare(args)
    sp = load_vocab(vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    reviews, labels = read_nsmc(args.reviews)
    n_seq = min(128, config.max_position_embeddings)  # train.py's default
    ids = encode_reviews(sp, reviews, n_seq)
    lengths = np.array([len(x) for x in ids])
    order = length_batches(lengths, args.ft_batch, np.random.default_rng(args.seed))[: args.warmup + args.steps]
    # ours in parts of at most this many padded tokens, by default as train.py cuts them
    parts_of = nsmc.default_batch_tokens(device) if args.ft_batch_tokens is None else args.ft_batch_tokens

    def collate(idx):  # by default padded as train.py pads them: the longest review rounded up to a multiple of 16
        b = collate_reviews([ids[i] for i in idx], [labels[i] for i in idx], n_seq, args.ft_pad_multiple)
        return {k: v.to(device) for k, v in b.items()}

    batches = []
    for idx in order:
        batches.append(collate(idx))  # transformers' step: the batch whole
        parts = token_split(idx, lengths, parts_of, n_seq)
        if len(parts) > 1:  # ours: train.py's parts of at most parts_of padded tokens
            batches[-1]["parts"] = [collate(p) for p in parts]

    def ours_loss(m, p, b):  # piece p's share of batch b's mean loss
        logits = m(p["input_ids"], attention_mask=p["attention_mask"]).float()
        return F.cross_entropy(logits, p["labels"], reduction="sum") / len(b["labels"])

    def hf_loss(m, b):
        return F.cross_entropy(
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float(), b["labels"]
        )

    ours = BertForSequenceClassification(config).to(device).train()
    threads = step_threads(args.step_threads or 1, device, 1)  # as train.py
    step = our_step(ours_loss, autocast, threads)
    models = {"ours": (maybe_compile(ours, args), configure_optimizer(ours, 5e-5, device_type=device.type), step)}
    if not args.no_hf:
        hf = make_hf("BertForSequenceClassification", config, device, ours.state_dict())
        models["transformers"] = (
            hf, configure_optimizer(hf, 5e-5, device_type=device.type), plain_step(hf_loss, autocast)
        )
    print(
        f"fine-tuning step: {args.config}, NSMC reviews of {os.path.basename(args.reviews)} in length-bucketed "
        f"batches of {args.ft_batch} padded to a multiple of {args.ft_pad_multiple} (mean padded length "
        f"{statistics.mean(b['input_ids'].size(1) for b in batches):.0f}), {ran_in(precision)} for both on {device}"
        f"{side_note(threads)}; ours "
        + (f"in parts of at most {parts_of:,} padded tokens, as train.py" if parts_of else "whole")
    )
    rates, first = race(models, batches, lambda b: len(b["labels"]), args, device, threads)
    med = report(rates, first, "finetune", "reviews/s")
    profile(models, batches, args, "finetune")
    T = statistics.mean(b["input_ids"].size(1) for b in batches)
    # the FLOPs the reviews need: real tokens only (ours skips the padding on a CPU, so padded ones would overcount)
    real = statistics.mean(float(b["attention_mask"].sum()) / len(b["labels"]) for b in batches)
    for name, r in med.items():
        per_review = statistics.mean(1 / x for x in rates[name])  # a run takes the sum of its steps' times
        print(
            f"finetune {name:>12}: one NSMC epoch (150,000 reviews) ~ {150000 * per_review / 60:.1f} min at the mean "
            f"step time ({150000 / r / 60:.1f} at the median rate)"
        )
        mfu_line("finetune", name, r * real, flops_per_token(config, T), device, precision)
    print(f"finetune: {real:.0f} real tokens per review of {T:.0f} padded; MFU counts real tokens")
    return med


def old_predict(model, sp, reviews, n_seq, batch=256):
    """predict.py before the streaming work, for the 'before' side: unsorted batches of 256 in fp32."""
    out = []
    ids = encode_reviews(sp, reviews, n_seq)
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            b = collate_reviews(ids[i : i + batch], n_seq=n_seq)
            p, label = model(b["input_ids"], attention_mask=b["attention_mask"]).float().softmax(-1).max(-1)
            out += list(zip(label.tolist(), p.tolist()))
    return out


def bench_predict(args, device):
    """predict.py's path against its own baseline (before) and transformers' text-classification pipeline, on
    the same reviews and an exported copy of the same (random-weight) classifier. Each side: reviews/s end to end."""
    import transformers

    transformers.logging.set_verbosity_error()
    precision = mixed_precision(device, args.fp32)[2]
    dtype = predict.DTYPES[precision]
    if device.type == "cpu":
        keep_freed_memory()  # as predict.py does on a CPU; the other sides run under it too
    vocab, _ = prepare(args)
    sp = load_vocab(vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    n_seq = min(128, config.max_position_embeddings)
    ckpt, hf_dir = os.path.join(args.work, "classifier.pth"), os.path.join(args.work, "hf_classifier")
    save_checkpoint(
        ckpt, {"model": BertForSequenceClassification(config).state_dict(), "config": config.to_dict(), "n_seq": n_seq}
    )
    if os.path.exists(os.path.join(hf_dir, "pytorch_model.bin")):
        os.remove(os.path.join(hf_dir, "pytorch_model.bin"))
    run(["export.py", "--pretrain", ckpt, "--vocab", vocab, "--output", hf_dir])
    reviews = read_nsmc(args.reviews)[0][: args.predict_reviews]
    ours, _, _ = predict.load_classifier(ckpt, vocab)
    ours.to(device, dtype)
    before = predict.load_classifier(ckpt, vocab)[0].to(device)
    hf = transformers.BertForSequenceClassification.from_pretrained(hf_dir, attn_implementation="sdpa")
    hf = hf.to(device, dtype).eval()
    has_tokenizer = any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
    if has_tokenizer:  # the pipeline as a user runs it, tokenizer included
        pipe = transformers.pipeline("text-classification", model=hf, tokenizer=hf_dir, device=device)

        def hf_side(texts):
            return pipe(texts, batch_size=args.hf_batch, truncation=True, max_length=n_seq)
    else:
        # no tokenizer files in the export: what the pipeline does after tokenizing, on our ids (tokenizing untimed)
        pre = [[5, *x[: n_seq - 2], 4] for x in sp.encode(reviews)]

        def hf_side(texts):
            out = []
            with torch.inference_mode():
                for i in range(0, len(pre), args.hf_batch):
                    chunk = pre[i : i + args.hf_batch]
                    T = max(len(x) for x in chunk)
                    x = torch.tensor([c + [0] * (T - len(c)) for c in chunk], device=device)
                    out += hf(input_ids=x, attention_mask=(x != 0).long()).logits.float().softmax(-1).tolist()
            return out

    sides = {
        "ours": (lambda t: predict.predict(ours, sp, t, n_seq), precision + " weights"),
        "before": (lambda t: old_predict(before, sp, t, n_seq), "fp32"),
        "transformers": (hf_side, precision + " weights"),
    }
    if device.type == "cpu":  # predict.py --int8: the encoder's matrix products in int8
        int8 = predict.quantize_int8(predict.load_classifier(ckpt, vocab)[0])
        sides["ours --int8"] = (lambda t: predict.predict(int8, sp, t, n_seq), "int8 matmuls")
    clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    print(
        f"predict: {args.config} classifier, {len(reviews):,} reviews of {os.path.basename(args.reviews)}, "
        f"{args.rounds} rounds on {device}; transformers: "
        + (
            f"pipeline('text-classification', batch_size={args.hf_batch}) on the texts"
            if has_tokenizer
            else f"the export has no tokenizer files, so the model gets our pre-tokenized ids in input order, "
            f"batches of {args.hf_batch} padded to their longest (the pipeline's work after tokenizing; "
            "tokenizing untimed)"
        )
    )
    rates = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, (fn, _) in sides.items():
            fn(reviews[:64])  # warm-up
            sync(device)
            t0 = clock()
            fn(reviews)
            sync(device)
            rates[name].append(len(reviews) / (clock() - t0))
    tokens = statistics.mean(min(len(x), n_seq - 2) + 2 for x in sp.encode(reviews))  # real tokens per review
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, (_, prec) in sides.items():
        print(
            f"predict {name:>12}: median {med[name]:,.0f} reviews/s "
            f"({prec}; rounds {', '.join(f'{r:,.0f}' for r in rates[name])})"
        )
        peak = "fp32" if prec.startswith("int8") else prec.split()[0]  # int8's share of the fp32 peak
        mfu_line("predict", name, med[name] * tokens, flops_per_token(config, tokens, False), device, peak)
    print(
        f"predict: ours {med['ours'] / med['before']:.1f}x before, "
        f"{med['ours'] / med['transformers']:.2f}x transformers "
        f"({tokens:.0f} real tokens per review; MFU counts real tokens)"
    )
    if "ours --int8" in med:
        print(
            f"predict: ours --int8 {med['ours --int8'] / med['ours']:.2f}x ours, "
            f"{med['ours --int8'] / med['before']:.1f}x before, {med['ours --int8'] / med['transformers']:.2f}x "
            "transformers (MFU above against the fp32 peak)"
        )
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
    """Pretrain from the same init on the same batches with the fast and the plain path; MLM and NSP loss every 25
    steps."""
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
    print(
        f"curve: {args.config}, batch {args.batch}, {precision} on {device}, lr 5e-4 (20 warmup steps); "
        f"mean loss per {every} steps"
    )
    print("| steps | MLM loss fast | MLM loss plain | NSP loss fast | NSP loss plain |")
    print("|---|---|---|---|---|")
    for i, (f, p) in enumerate(zip(curves["fast"], curves["plain"])):
        print(f"| {i * every + 1}-{(i + 1) * every} | {f[0]:.3f} | {p[0]:.3f} | {f[1]:.3f} | {p[1]:.3f} |")


def main(argv=None):
    args = get_args(argv)
    if (
        min(args.steps, args.batch, args.ft_batch, args.curve_steps, args.predict_reviews, args.rounds, args.hf_batch)
        < 1
    ):
        raise UserError(
            "--steps, --batch, --ft_batch, --curve_steps, --predict_reviews, --rounds and --hf_batch must be at least 1"
        )
    if args.warmup < 0 or (args.ft_batch_tokens or 0) < 0:
        raise UserError("--warmup and --ft_batch_tokens must be at least 0")
    require_file(args.config, "pass --config config_half.json or config.json")
    device = get_device(args.gpu)
    fast, threads = ours_model.FAST, torch.get_num_threads()
    try:  # tests call main() in-process: leave the model's path and the thread count as they were
        setup(args, device)
        print(describe_machine(device))
        if args.task in ("data", "all"):
            bench_data(args)
        if args.task in ("memory", "all"):
            bench_memory(args)
        if args.task in ("finetune", "all"):
            bench_finetune(args, device)
        if args.task in ("predict", "all"):
            bench_predict(args, device)
        if args.task == "curve":
            bench_curve(args, device)
        if args.task in ("pretrain", "all"):
            med = bench_pretrain(args, device)
            if "transformers" in med:
                print(
                    f"speedup vs transformers: {med['ours'] / med['transformers']:.2f}x "
                    f"(ours {med['ours']:,.0f} tok/s, transformers {med['transformers']:,.0f} tok/s)"
                )
    finally:
        ours_model.FAST = fast
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main_guard(main)
