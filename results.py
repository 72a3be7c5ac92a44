"""Reproduce the README results table: vocab -> data -> pretrain for P steps -> fine-tune on NSMC (several
seeds) -> test accuracy, for every P and recipe row, on the real data or any other.

    python results.py --wiki ../shared/data/kowiki --train ../shared/data/nsmc/ratings_train.txt \\
        --test ../shared/data/nsmc/ratings_test.txt        # the README table (hours on a 2-core CPU)

The rows:
    none             no pretraining: fine-tune from random weights
    wiki P           masked LM + NSP on the Wikipedia text for P steps (one run; the weights at each P are kept)
    wiki P + nsmc T  then T more steps on the NSMC *training* reviews (task-adaptive pretraining; test text never)
    nsmc T           the same T steps on the NSMC training reviews alone, from random weights (--tapt_alone)

`--tapt_text FILE` pretrains those T steps on other reviews instead of the training reviews, one review to a
line (plain, .gz or .xz), e.g. the unlabeled crawl reviews of `download.py --what reviews`; the rows are then
`wiki P + reviews T` and `reviews T`. A line of the file that is a review of --test (whitespace collapsed)
stops the run before any work: the test reviews never pretrain.

The vocabulary is learned from the Wikipedia text (--vocab_text wiki), the NSMC training reviews (nsmc) or
both; everything in --out belongs to that vocabulary, so each choice needs its own --out. `--objective electra`
pretrains every row with ELECTRA's replaced-token detection instead of masked LM + NSP (its own --out too).

Every stage is one call of this repository's scripts, printed before it runs, so each row can be rerun by
hand. A stage whose output is already there is skipped, so a killed run picks up where it stopped (pretrain.py
and train.py also resume mid-run). For each row the learning rate and batch are chosen by a small sweep: every
--lr x --batch pair trains on the first --sweep_reviews training reviews, and the best accuracy on their
validation share wins; then every seed trains on the whole training file with it, keeping its best epoch on
the validation split (early stopping with --patience). The test file never chooses anything.

Writes OUT/results.csv (one line per fine-tuning run), OUT/results.md (the README table: mean and standard
deviation over seeds), IMG/loss.svg and IMG/accuracy.svg. `--rows` runs some rows only; the table keeps the
other rows' last results, so rows with different options can share it.
"""

import argparse
import contextlib
import csv
import fcntl
import os
import platform
import shlex
import subprocess
import sys

import numpy as np

from corpus import collapse, open_binary, text_lines
from errors import UserError, main_guard, require_file
from nsmc import read_nsmc
from training import cpu_has_bf16, get_device


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wiki", default="data/kowiki", help="Wikipedia text for vocab.py and data.py")
    p.add_argument("--train", default="data/ratings_train.txt", help="NSMC training file")
    p.add_argument("--test", default="data/ratings_test.txt", help="NSMC test file")
    p.add_argument("--out", default="runs/results", help="where every stage's output goes")
    p.add_argument("--img", default="img", help="where loss.svg and accuracy.svg go")
    p.add_argument("--config", default="config_half.json")
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument(
        "--vocab_text",
        choices=["wiki", "nsmc", "both"],
        default="wiki",
        help="what vocab.py learns the pieces "
        "from: the Wikipedia text, the NSMC training reviews, or both (one --out per choice)",
    )
    p.add_argument("--n_seq", type=int, default=128, help="pretraining instance length")
    p.add_argument(
        "--wiki_steps", default="400,800,1200", help="comma-separated pretraining steps on the Wikipedia text"
    )
    p.add_argument(
        "--tapt_steps",
        type=int,
        default=1200,
        help="steps on the NSMC training reviews after the last wiki step (0: none)",
    )
    p.add_argument(
        "--tapt_alone", action="store_true", help="also the row of --tapt_steps on NSMC text from random weights"
    )
    p.add_argument("--tapt_dupe", type=int, default=5, help="data.py --dupe_factor for the NSMC text")
    p.add_argument(
        "--tapt_doc",
        type=int,
        default=10,
        help="NSMC training reviews per data.py document (instances are cut "
        "from one document, so small documents leave short, padded instances)",
    )
    p.add_argument(
        "--tapt_text",
        default=None,
        help="pretrain the T steps on these reviews (one a line, e.g. download.py --what reviews) instead of "
        "the NSMC training reviews; rows `reviews T`, `wiki P + reviews T`",
    )
    p.add_argument(
        "--objective",
        default="mlm",
        choices=["mlm", "electra"],
        help="pretrain.py --objective: masked LM + NSP, or ELECTRA's replaced-token detection (one per --out)",
    )
    p.add_argument("--pretrain_batch", type=int, default=64)
    p.add_argument(
        "--pretrain_accum",
        type=int,
        default=1,
        help="cut each pretraining step's --pretrain_batch instances, sorted by length, into this many "
        "micro-batches (pretrain.py --grad_accum): the same steps, less padding with one review to an instance",
    )
    p.add_argument("--pretrain_lr", type=float, default=5e-4)
    p.add_argument("--pretrain_warmup", type=float, default=0.06)
    p.add_argument(
        "--pretrain_workers",
        type=int,
        default=0,
        help="pretrain.py --workers (DataLoader processes; a GPU outruns one process's masking and batching)",
    )
    p.add_argument(
        "--dynamic_mask",
        action="store_true",
        help="pretrain.py --dynamic_mask: new masks in every epoch (for runs "
        "long enough to repeat the instances; then --tapt_dupe 1 is enough)",
    )
    p.add_argument(
        "--save_steps",
        type=int,
        default=500,
        help="pretrain.py --save_steps: a pretraining run killed (or at a session's end) resumes from its last save",
    )
    p.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    p.add_argument("--seeds", default="42,43,44", help="fine-tuning seeds; mean and spread over them")
    p.add_argument("--lr", default="1e-4,3e-4", help="fine-tuning learning rates to choose from on validation")
    p.add_argument("--lr_none", default="3e-4,1e-3", help="the same for the row without pretraining")
    p.add_argument("--epoch", type=int, default=2)
    p.add_argument("--patience", type=int, default=1, help="train.py --patience (early stopping on validation)")
    p.add_argument("--batch", default="64,128", help="fine-tuning batch sizes to choose from on validation")
    p.add_argument(
        "--sweep_reviews",
        type=int,
        default=20000,
        help="choose LR and batch on the first this many training reviews "
        "(their own validation share); 0: on the whole file with the first seed",
    )
    p.add_argument(
        "--gpu", type=int, default=None, help="CUDA device for pretraining and fine-tuning (CPU when left out)"
    )
    p.add_argument("--hardware", default=None, help="the hardware column (default: this machine's CPU)")
    p.add_argument(
        "--stop_after",
        choices=["data", "pretrain"],
        default=None,
        help="stop once the vocabulary and instances "
        "(data) or also the pretraining runs (pretrain) are done, e.g. to time steps or fine-tune seeds in parallel",
    )
    return p.parse_args(argv)


def run(cmd, log):
    """Run one stage, its output to `log`. A failure stops everything with the log's last line."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if p.returncode:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [s for s in f.read().replace("\r", "\n").splitlines() if s.strip()]
        raise UserError(f"stage failed (exit {p.returncode}), see {log}: {lines[-1] if lines else ''}")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{os.cpu_count()}-core {line.split(':', 1)[1].strip()}" + (
                        ", bf16" if cpu_has_bf16() else ""
                    )
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.processor() or 'CPU'}"


def gpu_name(gpu):
    import torch

    return f"{torch.cuda.get_device_name(get_device(gpu))} (CUDA)"  # get_device: a one-line error without that GPU


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def replacing(path, **open_args):
    """Write a file under a per-process temporary name, then rename it to `path`: results.py calls running side
    by side (one per seed) never read half a file, nor write into each other's."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", **open_args) as f:
        yield f
    os.replace(tmp, path)


def take_turn(out, what):
    """An exclusive lock on OUT/results.lock, held until the returned file is closed: results.py calls on one --out
    (gpu_results.sh runs one per seed side by side) take turns at the stages whose files they share, the
    vocabulary and instances, and the CSV, table and plots, so none reads a half-written file or writes over
    another's rows. The kernel drops the lock when the process ends, however it ends."""
    f = open(os.path.join(out, "results.lock"), "a")  # noqa: SIM115 (open while the turn lasts)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another results.py on {out} ({what})", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def nsmc_text(train, path, per_doc=10):
    """The training reviews as plain text for vocab.py and data.py, written once: one review per line, `per_doc`
    reviews per document. -> path"""
    if os.path.exists(path):
        return path
    reviews = [r.strip() for r in read_nsmc(train)[0] if r.strip()]
    with replacing(path, encoding="utf-8") as f:
        f.writelines("\n".join(reviews[i : i + per_doc]) + "\n\n" for i in range(0, len(reviews), per_doc))
    return path


def reviews_text(path, test, out_path, per_doc=10):
    """The reviews of `path` (one a line; plain, .gz or .xz) as text for data.py, `per_doc` reviews per document,
    written once; a review of the NSMC file `test` among them is a UserError. -> out_path"""
    if os.path.exists(out_path):
        return out_path
    require_file(path, "make it with `python download.py --what reviews`")
    test_texts = {collapse(t) for t in read_nsmc(test)[0] if t.strip()}
    with open_binary(path) as f:
        reviews = [r for r in map(collapse, text_lines(f, path)) if r]
    if leaked := [n for n, r in enumerate(reviews, 1) if r in test_texts]:
        raise UserError(
            f"{len(leaked)} reviews of {path} are reviews of {test} (non-empty line {leaked[0]} first); the test "
            "reviews must not pretrain: drop them (download.py --what reviews does)"
        )
    print(f"{path}: {len(reviews)} reviews, none of them a review of {test}", flush=True)
    with replacing(out_path, encoding="utf-8") as f:
        f.writelines("\n".join(reviews[i : i + per_doc]) + "\n\n" for i in range(0, len(reviews), per_doc))
    return out_path


def finetune(cmd, prefix, row, lr, batch, seed):
    """One train.py run (skipped when done) -> `row` plus its best-on-validation epoch's figures."""
    tag = f"{prefix}_lr{lr}_b{batch}_s{seed}"
    if not os.path.exists(f"{tag}/done"):
        os.makedirs(tag, exist_ok=True)
        run(
            [*cmd, "--lr", lr, "--batch", batch, "--seed", str(seed), "--save", f"{tag}.pth", "--log_dir", tag],
            f"{tag}/train.log",
        )
        open(f"{tag}/done", "w").close()
    epochs = read_log(f"{tag}/log.csv")
    best = max(epochs, key=lambda r: float(r["valid_acc"]))  # the first best, as train.py keeps
    return {
        **row,
        "lr": lr,
        "batch": int(batch),
        "seed": seed,
        "epochs_run": len(epochs),
        "best_epoch": int(best["epoch"]),
        "train_loss": float(best["train_loss"]),
        "valid_acc": float(best["valid_acc"]),
        "test_acc": float(best["test_acc"]),
        "finetune_s": round(float(epochs[-1]["elapsed_s"])),
    }


def main(argv=None):
    args = get_args(argv)
    if args.pretrain_accum < 1 or args.pretrain_batch % args.pretrain_accum:
        raise UserError(
            f"--pretrain_accum must divide --pretrain_batch ({args.pretrain_batch}), got {args.pretrain_accum}"
        )
    for path in (args.wiki, args.train, args.test, args.config):
        require_file(path, "see README (pipeline on real data) or pass --wiki/--train/--test")
    py, out = sys.executable, args.out
    os.makedirs(out, exist_ok=True)
    os.makedirs(args.img, exist_ok=True)
    hardware = args.hardware or (gpu_name(args.gpu) if args.gpu is not None else cpu_name())
    seeds = [int(s) for s in args.seeds.split(",")]
    wiki_steps = sorted(int(s) for s in args.wiki_steps.split(",") if s.strip())
    vocabs = {"wiki": "kowiki", "nsmc": "nsmc_vocab", "both": "kowiki+nsmc_vocab"}
    prefix = f"{out}/{vocabs[args.vocab_text]}"
    vocab = prefix + ".model"
    other = [v for v in vocabs.values() if v != vocabs[args.vocab_text] and os.path.exists(f"{out}/{v}.model")]
    if other:  # instances and checkpoints in OUT are tied to the vocab they were made with
        raise UserError(f"{out} holds {other[0]}.model, made with another --vocab_text; pass another --out")
    common = ["--config", args.config, "--vocab", vocab] + (["--gpu", str(args.gpu)] if args.gpu is not None else [])

    tapt = "reviews" if args.tapt_text else "nsmc"  # the second stage's text: other reviews or the training ones
    wiki_data, tapt_data = (
        f"{out}/wiki{args.n_seq}.json",
        f"{out}/{tapt}{args.n_seq}_doc{args.tapt_doc}_dupe{args.tapt_dupe}.json",
    )
    tapt_desc = f"{os.path.basename(args.tapt_text)} reviews" if args.tapt_text else "NSMC train text"
    # the pretraining runs: name -> (instances, steps, starting weights, weights kept at these steps)
    pretrain_runs = {}
    if wiki_steps:
        pretrain_runs["wiki"] = (wiki_data, wiki_steps[-1], None, wiki_steps[:-1])
    if args.tapt_steps and wiki_steps:
        pretrain_runs[f"wiki+{tapt}"] = (tapt_data, args.tapt_steps, f"{out}/wiki.pth", [])
    if args.tapt_steps and (args.tapt_alone or not wiki_steps):
        pretrain_runs[tapt] = (tapt_data, args.tapt_steps, None, [])
    # rows: name -> (pretraining description, checkpoint or None, [(pretraining run, steps of it)])
    rows = {"none": ("none", None, [])}
    how = "ELECTRA, " if args.objective == "electra" else ""  # the pretraining column says which objective
    for p in wiki_steps:
        rows[f"wiki {p}"] = (
            f"{how}wiki {p} steps",
            f"{out}/wiki.pth" if p == wiki_steps[-1] else f"{out}/wiki_step{p}.pth",
            [("wiki", p)],
        )
    if f"wiki+{tapt}" in pretrain_runs:
        rows[f"wiki {wiki_steps[-1]} + {tapt} {args.tapt_steps}"] = (
            f"{how}wiki {wiki_steps[-1]} + {tapt_desc} {args.tapt_steps} steps",
            f"{out}/wiki+{tapt}.pth",
            [("wiki", wiki_steps[-1]), (f"wiki+{tapt}", args.tapt_steps)],
        )
    if tapt in pretrain_runs:
        rows[f"{tapt} {args.tapt_steps}"] = (
            f"{how}{tapt_desc} {args.tapt_steps} steps",
            f"{out}/{tapt}.pth",
            [(tapt, args.tapt_steps)],
        )
    all_rows = list(rows)
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",")]
        unknown = [r for r in wanted if r not in rows]
        if unknown:
            raise UserError(f"--rows: unknown row(s) {unknown}; rows are {list(rows)}")
        rows = {r: rows[r] for r in wanted}
    needed = {name for _, _, runs in rows.values() for name, _ in runs}
    if needed:  # the checkpoints in OUT belong to one objective, as its instances to one vocab
        mark = f"{out}/objective"
        if os.path.exists(mark):
            with open(mark) as f:
                had = f.read().strip()
            if had != args.objective:
                raise UserError(f"{out} holds checkpoints pretrained with --objective {had}; pass another --out")
        else:
            with replacing(mark) as f:  # the seeds gpu_results.sh runs side by side never read it half-written
                f.write(args.objective + "\n")

    # 1. vocabulary and pretraining instances (only what the rows need)
    turn = take_turn(out, "vocabulary and instances")
    nsmc_txt = f"{out}/nsmc_train_doc{args.tapt_doc}.txt"  # written when the vocab or the TAPT instances need it
    make_tapt = needed & {f"wiki+{tapt}", tapt} and not os.path.exists(tapt_data)
    if make_tapt and args.tapt_text:  # first: a test review among them stops the run before any work
        tapt_txt = reviews_text(args.tapt_text, args.test, f"{out}/reviews_doc{args.tapt_doc}.txt", args.tapt_doc)
    if not os.path.exists(vocab):
        text = [args.wiki] if args.vocab_text != "nsmc" else []
        text += [nsmc_text(args.train, nsmc_txt, args.tapt_doc)] if args.vocab_text != "wiki" else []
        run(
            [py, "vocab.py", "--input", *text, "--prefix", prefix, "--vocab_size", str(args.vocab_size)],
            f"{out}/vocab.log",
        )
    if needed & {"wiki", f"wiki+{tapt}"} and not os.path.exists(wiki_data):
        run(
            [
                py,
                "data.py",
                "--input",
                args.wiki,
                "--vocab",
                vocab,
                "--output",
                wiki_data + ".part",
                "--n_seq",
                str(args.n_seq),
            ],
            f"{out}/data_wiki.log",
        )
        os.replace(wiki_data + ".part", wiki_data)
    if make_tapt:
        run(
            [
                py,
                "data.py",
                "--input",
                tapt_txt if args.tapt_text else nsmc_text(args.train, nsmc_txt, args.tapt_doc),
                "--vocab",
                vocab,
                "--output",
                tapt_data + ".part",
                "--n_seq",
                str(args.n_seq),
                "--dupe_factor",
                str(args.tapt_dupe),
            ],
            f"{out}/data_{tapt}.log",
        )
        os.replace(tapt_data + ".part", tapt_data)

    turn.close()

    if args.stop_after == "data":
        print(f"data ready in {out} (--stop_after data)")
        return

    # 2. pretraining
    elapsed = {}  # pretraining run -> {step: seconds since its start}
    for name, (data, steps, init, keep) in pretrain_runs.items():
        if name not in needed:
            continue
        save, log_dir = f"{out}/{name}.pth", f"{out}/pretrain_{name}"
        if not os.path.exists(f"{log_dir}/done"):
            cmd = [
                py,
                "pretrain.py",
                *common,
                "--input",
                data,
                "--save",
                save,
                "--epoch",
                "1000",
                "--max_steps",
                str(steps),
                "--batch",
                str(args.pretrain_batch // args.pretrain_accum),
                "--lr",
                str(args.pretrain_lr),
                "--warmup",
                str(args.pretrain_warmup),
                "--log_dir",
                log_dir,
                "--seed",
                "42",
            ]
            cmd += ["--grad_accum", str(args.pretrain_accum)] if args.pretrain_accum > 1 else []
            cmd += ["--save_steps", str(args.save_steps)] if args.save_steps else []
            cmd += ["--pretrain", init] if init else []
            cmd += ["--objective", args.objective] if args.objective != "mlm" else []
            cmd += ["--dynamic_mask"] if args.dynamic_mask else []
            cmd += ["--workers", str(args.pretrain_workers)] if args.pretrain_workers else []
            cmd += ["--keep_steps", ",".join(map(str, keep))] if keep else []
            run(cmd, f"{out}/pretrain_{name}.log")
            open(f"{log_dir}/done", "w").close()
        elapsed[name] = {int(r["step"]): float(r["elapsed_s"]) for r in read_log(f"{log_dir}/log.csv")}

    if args.stop_after == "pretrain":
        print(f"pretraining done in {out} (--stop_after pretrain)")
        return

    # 3. fine-tuning: for each row LR and batch chosen on validation, then every seed with them
    sweep_train = args.train
    if args.sweep_reviews:
        sweep_train = f"{out}/sweep{args.sweep_reviews}_train.txt"
        if not os.path.exists(sweep_train):
            with open(args.train, encoding="utf-8") as f, replacing(sweep_train, encoding="utf-8") as g:
                g.writelines(
                    line for _, line in zip(range(args.sweep_reviews + 1), f)
                )  # the header and the first N reviews
    results = []
    for item, (desc, ckpt, runs) in rows.items():
        grid = [(lr, b) for lr in (args.lr_none if ckpt is None else args.lr).split(",") for b in args.batch.split(",")]
        prefix = f"{out}/ft/{item.replace(' ', '_')}"
        row = {
            "item": item,
            "pretraining": desc,
            "pretrain_s": round(sum(elapsed[r][min(s for s in elapsed[r] if s >= p)] for r, p in runs)),
            "hardware": hardware,
        }
        cmd = [
            py,
            "train.py",
            *common,
            "--test",
            args.test,
            "--epoch",
            str(args.epoch),
            "--patience",
            str(args.patience),
        ]
        cmd += ["--pretrain", ckpt] if ckpt else []
        full = [*cmd, "--train", args.train]
        if len(grid) > 1 and args.sweep_reviews:
            tried = [
                finetune([*cmd, "--train", sweep_train], prefix + "_sweep", row, lr, b, seeds[0]) for lr, b in grid
            ]
        else:
            tried = [finetune(full, prefix, row, lr, b, seeds[0]) for lr, b in grid]
        chosen = max(tried, key=lambda r: r["valid_acc"])
        for r in tried:
            print(
                f"{item}: lr {r['lr']} batch {r['batch']}: valid {r['valid_acc']:.4f}"
                + (" (chosen)" if r is chosen else ""),
                flush=True,
            )
        lr, b = chosen["lr"], str(chosen["batch"])
        results += [finetune(full, prefix, row, lr, b, s) for s in seeds]
        for r in results[-len(seeds) :]:
            print(
                f"{item}: lr {lr} batch {b} seed {r['seed']}: epoch {r['best_epoch']}, test {r['test_acc']:.4f}",
                flush=True,
            )

    # 4. the CSV (rows run before with other options are kept), the table and the plots
    turn = take_turn(out, "results.csv")
    path = f"{out}/results.csv"
    if os.path.exists(path):
        results = [r for r in read_log(path) if r["item"] not in rows] + results
    order = list(all_rows) + sorted({r["item"] for r in results} - set(all_rows))
    results.sort(key=lambda r: order.index(r["item"]))
    fields = list(dict.fromkeys(k for r in results for k in r))
    with replacing(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(results)
    lines = ["| ITEM | pretraining | epoch | loss | accuracy | time | hardware |", "|---|---|---|---|---|---|---|"]
    summary = []
    for item in dict.fromkeys(r["item"] for r in results):
        rs = [r for r in results if r["item"] == item]
        acc = np.array([float(r["test_acc"]) for r in rs])
        summary.append((item, acc))
        epochs = "/".join(str(r["best_epoch"]) for r in rs)
        loss = np.mean([float(r["train_loss"]) for r in rs])
        minutes = (
            f"{float(rs[0]['pretrain_s']) / 60:.0f} min + {np.mean([float(r['finetune_s']) for r in rs]) / 60:.0f} min"
        )
        spread = f" ± {acc.std(ddof=1):.4f}" if len(acc) > 1 else ""
        lines.append(
            f"| {item} | {rs[0]['pretraining']} | {epochs} | {loss:.4f} | **{acc.mean():.4f}**{spread} "
            f"({len(acc)} seed{'s' if len(acc) > 1 else ''}; lr {rs[0]['lr']}, batch {rs[0]['batch']}) | {minutes} | "
            f"{rs[0]['hardware']} |"
        )
    table = "\n".join(lines) + "\n"
    with replacing(f"{out}/results.md") as f:
        f.write(table)
    print(table)
    plot(args, summary)
    turn.close()
    print(f"wrote {path}, {out}/results.md, {args.img}/loss.svg, {args.img}/accuracy.svg")


def plot(args, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("wiki", "wiki+nsmc", "nsmc"):
        if os.path.exists(f"{args.out}/pretrain_{name}/done"):
            log = read_log(f"{args.out}/pretrain_{name}/log.csv")
            start = (
                int(read_log(f"{args.out}/pretrain_wiki/log.csv")[-1]["step"]) if name == "wiki+nsmc" else 0
            )  # it goes on from wiki
            key, what = ("gen_loss", "generator MLM loss") if "gen_loss" in log[0] else ("mlm_loss", "MLM loss")
            ax.plot([start + int(r["step"]) for r in log], [float(r[key]) for r in log], label=f"{name}: {what}")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(f"{args.img}/loss.svg")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (item, acc) in enumerate(summary):
        ax.errorbar([i], [acc.mean()], yerr=[acc.std(ddof=1) if len(acc) > 1 else 0], fmt="o", capsize=4)
        ax.scatter([i] * len(acc), acc, s=8, color="gray")
    ax.axhline(0.8727, color="red", ls="--", lw=1, label="TF-IDF + logistic regression (0.8727)")
    ax.axhline(0.8134, color="gray", ls=":", lw=1, label="reference, no pretraining (0.8134)")
    ax.set_xticks(range(len(summary)), [s[0] for s in summary], rotation=20, fontsize=8)
    ax.set_ylabel("NSMC test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{args.img}/accuracy.svg")
    plt.close(fig)


if __name__ == "__main__":
    main_guard(main)
