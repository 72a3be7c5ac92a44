"""Fine-tune BERT on NSMC (Naver movie review sentiment) and report test accuracy.

    python train.py --pretrain save_pretrain.pth          # from a pretrained checkpoint
    python train.py                                       # from scratch (random weights)
    python train.py --pretrain save_pretrain.pth --gpu 0
    python train.py --pretrain save_pretrain.pth --unlabeled teacher.tsv   # self-training on a teacher's labels

A --valid share of the training file is held out; the epoch with the best validation accuracy is
saved to --save, so the test file never picks the model. Test accuracy is reported every epoch.
Writes <log_dir>/log.csv, loss.svg and accuracy.svg. Predict with the result: `python predict.py "..."`.

Self-training: --unlabeled takes predict.py's output on unlabeled reviews (`predict.py --input reviews.txt
--save a.pth --save b.pth > teacher.tsv`, a teacher ensemble) and adds them to the training set with the
teacher's probabilities as soft targets. A review of the test file among them stops the run; reviews of this
run's validation share are dropped, so validation stays unseen.

    torchrun --nproc_per_node 4 train.py --pretrain save_pretrain.pth --gpu 0   # 4 GPUs (DDP); --batch is per process

The training state (model, optimizer, scheduler, RNG states, position in the data order, best epoch
so far) goes to --resume every --save_steps steps and every epoch; a run finds it there and goes on
exactly where the last one stopped, and deletes it when it is done. SIGINT/SIGTERM save and exit.
"""

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from checkpoint import (
    check_config,
    encoder_weights,
    load_checkpoint,
    lock_checkpoint,
    restore_training,
    save_checkpoint,
)
from corpus import collapse
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForSequenceClassification, configure_optimizer, count_parameters
from nsmc import (
    LABELS,
    collate_reviews,
    default_batch_tokens,
    encode_reviews,
    length_batches,
    read_nsmc,
    token_split,
    valid_split,
)
from training import (
    StopSignal,
    all_sum,
    append_csv,
    backward,
    finish_distributed,
    gather_rng_states,
    linear_warmup_decay,
    mixed_precision,
    optimizer_step,
    plot_csv,
    rank0_only,
    release_free_memory,
    set_rng_state,
    set_seed,
    setup_distributed,
    side_by_side,
    split_step,
    step_threads,
    stop_bad_steps,
    truncate_csv,
)
from vocab import load_vocab

TRIM_EVERY = 50  # CPU training steps between malloc_trim calls (a whole NSMC epoch: peak RSS 1.54 -> 1.44 GB)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config_half.json", help="model config; must match --pretrain's")
    p.add_argument("--vocab", default="kowiki.model", help="SentencePiece model from vocab.py")
    p.add_argument("--train", default="data/ratings_train.txt", help="NSMC training file (id, document, label)")
    p.add_argument("--test", default="data/ratings_test.txt", help="NSMC test file")
    p.add_argument("--pretrain", default=None, help="checkpoint from pretrain.py; random weights when left out")
    p.add_argument(
        "--unlabeled",
        default=None,
        help="predict.py's output (label, probability, review a line) on unlabeled reviews: more training reviews, "
        "with the teacher's probabilities as soft targets",
    )
    p.add_argument("--unlabeled_max", type=int, default=0, help="only the first this many --unlabeled lines (0: all)")
    p.add_argument("--save", default="save_best.pth", help="where the best-on-validation model goes")
    p.add_argument("--epoch", type=int, default=5)
    p.add_argument("--batch", type=int, default=128, help="reviews per process per micro-batch")
    p.add_argument(
        "--grad_accum",
        type=int,
        default=1,
        help="micro-batches per optimizer step (effective batch: batch x grad_accum x processes)",
    )
    p.add_argument(
        "--batch_tokens",
        type=int,
        default=None,
        help="a micro-batch of more padded tokens is cut into parts (same step, less memory; 0: never); "
        "default 2048 on a CPU, 0 on a GPU",
    )
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup steps, as a fraction of all steps")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument(
        "--layer_decay",
        type=float,
        default=1.0,
        help="layer-wise LR decay (ELECTRA's fine-tuning): each encoder layer trains at this times the LR of the "
        "one above, the head at --lr (1: one LR for all)",
    )
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument(
        "--n_seq",
        type=int,
        default=None,
        help="reviews are cut to this many tokens (default: 128 or the config's positions)",
    )
    p.add_argument(
        "--resume", default=None, help="training state to write and to resume from (default: --save with .resume.pth)"
    )
    p.add_argument(
        "--save_steps", type=int, default=0, help="also save the training state every this many optimizer steps"
    )
    p.add_argument(
        "--max_bad_steps", type=int, default=5, help="stop after this many NaN/inf losses in a row (each is skipped)"
    )
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        help="early stopping: stop after this many epochs without a better validation accuracy (0: run all --epoch)",
    )
    p.add_argument("--valid", type=float, default=0.05, help="share of --train held out to pick the best epoch")
    p.add_argument(
        "--valid_seed",
        type=int,
        default=None,
        help="seed of the --valid draw (default: --seed); one for all seeds keeps a teacher ensemble off the "
        "students' validation reviews",
    )
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument("--fp32", action="store_true", help="turn off mixed precision")
    p.add_argument(
        "--step_threads", type=int, default=1,
        help="CPU: run a step's micro-batches in this many threads side by side, the cores shared among them "
        "(1: one after the other, the default: a fine-tuning epoch on 2 cores was no faster with 2; pretrain.py "
        "takes 2 by default; always 1 on a GPU and under torchrun)",
    )
    p.add_argument("--log_dir", default="runs/train", help="where log.csv, loss.svg and accuracy.svg go")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.valid_seed is None:
        args.valid_seed = args.seed
    return args


@torch.no_grad()
def evaluate(model, ids, labels, batch, n_seq, device, autocast, rank=0, world=1, batch_tokens=8192):
    """-> (mean loss, accuracy). Reviews are sorted by length so each batch pads little; process r takes every
    world-th batch; a batch of more than batch_tokens padded tokens is cut into parts (less memory, same sums)."""
    model.eval()
    release_free_memory()  # before and after: training's freed pages, then evaluation's
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
    parts = (
        p
        for i in range(rank * batch, len(order), batch * world)
        for p in token_split(order[i : i + batch], lengths, batch_tokens, n_seq)
    )
    for idx in parts:
        b = {
            k: v.to(device) for k, v in collate_reviews([ids[j] for j in idx], [labels[j] for j in idx], n_seq).items()
        }
        with autocast:
            logits = model(b["input_ids"], attention_mask=b["attention_mask"], cls_only=True).float()
        sums += torch.stack(
            [F.cross_entropy(logits, b["labels"], reduction="sum"), (logits.argmax(-1) == b["labels"]).sum()]
        ).double()
    loss, correct = all_sum(sums, world).tolist()
    release_free_memory()
    model.train()
    return loss / len(ids), correct / len(ids)


def check_args(args):
    bad_tokens = args.batch_tokens is not None and args.batch_tokens < 0
    if args.epoch < 1 or args.batch < 1 or args.grad_accum < 1 or not 0 <= args.valid < 1 or bad_tokens:
        raise UserError(
            "--epoch, --batch and --grad_accum must be at least 1, --batch_tokens at least 0 and --valid in [0, 1)"
        )
    if args.unlabeled_max < 0:
        raise UserError("--unlabeled_max must be at least 0 (0: every line)")
    if not 0 < args.layer_decay <= 1:
        raise UserError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    if args.step_threads < 1:  # its default is 1, never None
        raise UserError(f"--step_threads must be at least 1, got {args.step_threads}")
    require_file(args.config, "pass --config config_half.json or config.json")
    if args.unlabeled:
        require_file(args.unlabeled, "make it with `python predict.py --input REVIEWS --save MODEL > FILE`")


def read_teacher(path, limit=0):
    """predict.py's output (`label<TAB>probability<TAB>review` a line) -> (reviews, probability of positive)."""
    reviews, p_pos = [], []
    with open(path, encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if limit and n > limit:
                    break
                fields = line.rstrip("\n").split("\t", 2)
                try:
                    label, prob = LABELS.index(fields[0]), float(fields[1])
                    if len(fields) < 3 or not 0.5 <= prob <= 1:
                        raise ValueError
                except (ValueError, IndexError):
                    raise UserError(
                        f"{path}:{n}: expected predict.py's 'label<TAB>probability<TAB>review', got {line[:60]!r}"
                    ) from None
                reviews.append(fields[2])
                p_pos.append(prob if label == 1 else 1 - prob)
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text (predict.py's output)") from None
    if not reviews:
        raise UserError(f"{path} has no reviews; make it with `python predict.py --input REVIEWS --save MODEL`")
    return reviews, p_pos


def build_model(args, config, log):
    """A classifier with --pretrain's encoder weights (and a new random head), or random weights throughout."""
    model = BertForSequenceClassification(config)
    if not args.pretrain:
        log("no --pretrain given: training from scratch (random weights)")
        return model
    state = load_checkpoint(args.pretrain)
    check_config(state, config, args.pretrain, args.config)
    missing, unexpected = model.load_state_dict(encoder_weights(state), strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    done = f" ({state['step']} pretraining steps)" if "step" in state else ""
    log(f"fine-tuning from {args.pretrain}{done}")
    return model


def load_splits(args, sp, log=print):
    """-> train, valid, test: (token ids, labels) each, and the soft targets of train (probability of positive:
    the labels, then --unlabeled's; None without it). The --valid share of --train is drawn from --valid_seed."""
    reviews, labels = read_nsmc(args.train)
    test_reviews, test_labels = read_nsmc(args.test)
    train_idx, valid_idx = valid_split(len(reviews), args.valid, args.valid_seed)
    ids = encode_reviews(sp, reviews, args.n_seq)
    train = [ids[i] for i in train_idx], [labels[i] for i in train_idx]
    valid = [ids[i] for i in valid_idx], [labels[i] for i in valid_idx]
    test = encode_reviews(sp, test_reviews, args.n_seq), test_labels
    if not args.unlabeled:
        return train, valid, test, None
    extra, p_pos = read_teacher(args.unlabeled, args.unlabeled_max)
    # the test reviews never train (checked on the text, whitespace collapsed); validation stays unseen too
    test_texts = {collapse(t) for t in test_reviews if t.strip()}
    if leaked := [n for n, t in enumerate(extra, 1) if collapse(t) in test_texts]:
        raise UserError(
            f"{len(leaked)} reviews of {args.unlabeled} are reviews of {args.test} (line {leaked[0]} first); "
            "the test reviews must stay out of training: drop them from the unlabeled reviews"
        )
    valid_texts = {collapse(reviews[i]) for i in valid_idx}
    keep = [i for i, t in enumerate(extra) if collapse(t) not in valid_texts]
    log(
        f"{args.unlabeled}: {len(keep):,} unlabeled reviews with the teacher's probabilities "
        f"({len(extra) - len(keep):,} dropped: reviews of the validation share)"
    )
    extra_ids = encode_reviews(sp, [extra[i] for i in keep], args.n_seq)
    soft = [float(y) for y in train[1]] + [p_pos[i] for i in keep]
    train = train[0] + extra_ids, train[1] + [int(p_pos[i] > 0.5) for i in keep]
    return train, valid, test, soft


def epoch_batches(lengths, global_batch, min_size, seed, epoch):
    """Length-bucketed global batches drawn from (seed, epoch) alone, so a resumed run draws them again;
    a batch too small to give every process and micro-batch a review is dropped."""
    batches = length_batches(lengths, global_batch, np.random.default_rng([seed, epoch]))
    return [b for b in batches if len(b) >= min_size]


def restore_state(path, args, config, fields, model, optimizer, scheduler, scaler):
    """Load the training state at `path` into the model, optimizer, scheduler and scaler after checking it was made
    with this run's options (`fields`); -> the state, for its counters."""
    state = load_checkpoint(path, "delete it to start afresh")
    check_config(state, config, path, args.config)
    if "best" not in state:
        raise UserError(f"{path} is not a train.py training state; pass another --resume")
    if not state["epoch_step"]:
        fields.pop("global_batch")  # only the data order within an epoch depends on it
    state.setdefault("valid_seed", state["seed"])  # a state from before --valid_seed drew its split from --seed
    state.setdefault("layer_decay", 1.0)  # and one from before --layer_decay had one LR
    for name, value in fields.items():
        if state[name] != value:
            raise UserError(
                f"{path} has {name}={state[name]} but this run has {name}={value}; "
                "run with the same options, or delete it to start afresh"
            )
    restore_training(state, model, optimizer, scheduler, scaler)
    return state


def train_step(model, micro, n_step, world, device, autocast, scaler):
    """Forward and backward over the micro-batches of one optimizer step (`n_step` reviews over all processes);
    -> [summed loss, reviews] of this process."""
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for k, b in enumerate(micro):
        b = {key: v.to(device, non_blocking=True) for key, v in b.items()}
        if world > 1:
            model.require_backward_grad_sync = k == len(micro) - 1  # DDP all-reduces on the last micro-batch only
        with autocast:
            logits = model(b["input_ids"], attention_mask=b["attention_mask"])
        if "soft" in b:  # cross-entropy against (1 - p, p): a label is p = 0 or 1, a teacher's is its probability
            target = torch.stack([1 - b["soft"], b["soft"]], -1)
            loss_sum = -(target * logits.float().log_softmax(-1)).sum()
        else:
            loss_sum = F.cross_entropy(logits.float(), b["labels"], reduction="sum")
        # the mean over the whole step, so N processes x batch B x K micro-batches make the gradient of
        # one process with batch N*B*K; DDP divides by the number of processes, hence * world
        loss = loss_sum / n_step * world
        backward(scaler.scale(loss) if scaler is not None else loss, model)  # training.backward: see side_by_side
        sums += torch.stack([loss_sum.detach().double(), torch.tensor(len(b["labels"]), device=device)])
    return sums


def main(argv=None):
    # arguments, checks, processes and precision
    args = get_args(argv)
    check_args(args)
    rank, world, device = setup_distributed(args.gpu)
    master = rank == 0  # only rank 0 prints, logs, plots and writes checkpoints
    log = print if master else lambda *a, **k: None
    set_seed(args.seed + rank)  # dropout differs per process; DDP copies rank 0's initial weights to the others
    autocast, scaler, precision = mixed_precision(device, args.fp32)
    if args.batch_tokens is None:
        args.batch_tokens = default_batch_tokens(device)

    # model and data
    sp = load_vocab(args.vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    args.n_seq = args.n_seq or min(128, config.max_position_embeddings)
    if args.n_seq > config.max_position_embeddings:
        raise UserError(f"--n_seq {args.n_seq} is above the {config.max_position_embeddings} positions of "
                        f"{args.config}")
    model = build_model(args, config, log).to(device)
    (train_ids, train_labels), (valid_ids, valid_labels), (test_ids, test_labels), soft = load_splits(args, sp, log)
    resume = args.resume or os.path.splitext(args.save)[0] + ".resume.pth"
    rank0_only(lambda: [lock_checkpoint(args.save), lock_checkpoint(resume, "--resume")], rank, world)  # one run each
    log(
        f"model: {count_parameters(model) / 1e6:.1f}M parameters; {len(train_ids):,} train / {len(valid_ids):,} "
        f"valid / {len(test_ids):,} test reviews; {precision} on {device}"
    )
    lengths = np.array([len(x) for x in train_ids])
    global_batch = args.batch * args.grad_accum * world  # reviews per optimizer step, all processes together
    min_size = world * args.grad_accum
    steps_per_epoch = len(epoch_batches(lengths, global_batch, min_size, args.seed, 0))  # the same for every draw
    if steps_per_epoch == 0:
        raise UserError(
            f"{args.train} leaves {len(train_ids)} training reviews, fewer than processes x --grad_accum ({min_size})"
        )
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, device_type=device.type,
                                    layer_decay=args.layer_decay)
    total_steps = steps_per_epoch * args.epoch
    warmup = max(1, int(args.warmup * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps))
    threads = step_threads(args.step_threads, device, world)
    split = f"; parts of at most {args.batch_tokens:,} padded tokens" if args.batch_tokens else ""
    split += f"; {threads} threads side by side" if threads > 1 else ""
    split += f"; LR x {args.layer_decay} a layer down (--layer_decay)" if args.layer_decay < 1 else ""
    log(f"{total_steps:,} steps of effective batch {global_batch} ({args.batch} x {args.grad_accum} micro-batches x "
        f"{world} processes{split})")

    # resume: epochs done, optimizer steps done, steps into the current epoch, the best epoch so far
    epoch, step, epoch_step, best, rng = 0, 0, 0, None, None
    epoch_sums = torch.zeros(2, dtype=torch.float64, device=device)  # this epoch's training loss and reviews so far
    # a resumed run must have the same values of these (checked against the saved state)
    fields = {"n_seq": args.n_seq, "valid": args.valid, "seed": args.seed, "valid_seed": args.valid_seed,
              "train_reviews": len(train_ids), "global_batch": global_batch, "layer_decay": args.layer_decay}
    if os.path.exists(resume):
        state = restore_state(resume, args, config, dict(fields), model, optimizer, scheduler, scaler)
        epoch, step, epoch_step, best, rng = (state[k] for k in ("epoch", "step", "epoch_step", "best", "rng"))
        if master:  # the other ranks' sums start at 0: the epoch's total is their sum
            epoch_sums += state["epoch_sums"].to(device)
        into = f" ({epoch_step} into epoch {epoch + 1})" if epoch_step else ""
        log(f"resuming from {resume}: {epoch} epochs, {step} steps done{into}")
    if rng and len(rng) == world:
        set_rng_state(rng[rank])  # dropout goes on with the masks it would have drawn
    elif rng:
        log(f"note: {resume} was written by {len(rng)} processes, this run has {world}; dropout draws new masks")
    log_csv = os.path.join(args.log_dir, "log.csv")
    if master:
        os.makedirs(args.log_dir, exist_ok=True)
        if step == 0 and os.path.exists(log_csv):
            os.remove(log_csv)
        truncate_csv(log_csv, "epoch", epoch)  # rows of epochs the state does not have will come again
    raw_model = model
    if world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state():
        states = gather_rng_states(world)  # every rank takes part; rank 0 writes
        sums = all_sum(epoch_sums.clone(), world).cpu()
        if master:
            save_checkpoint(resume, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "step": step, "epoch_step": epoch_step, "epoch_sums": sums, "best": best,
                "rng": states, "config": config.to_dict(), "vocab_size": config.vocab_size, **fields,
            })

    # the loop: epochs of length-bucketed steps, then validation and test accuracy at each epoch's end
    stop = StopSignal()
    bad_steps = 0
    t_start = time.time()
    model.train()
    try:
        while epoch < args.epoch:
            if args.patience and valid_ids and best and epoch - best["epoch"] >= args.patience:
                log(f"early stop: no better validation accuracy in the {args.patience} epoch(s) after epoch "
                    f"{best['epoch']}")
                break
            batches = epoch_batches(lengths, global_batch, min_size, args.seed, epoch)
            bar = tqdm(batches[epoch_step:], desc=f"epoch {epoch + 1}/{args.epoch}", total=len(batches),
                       initial=epoch_step, disable=not master)
            for gb in bar:
                parts = [  # this process's micro-batches, a long one cut in parts of at most --batch_tokens
                    part
                    for mb in split_step(gb, rank, world, args.grad_accum)
                    for part in token_split(mb, lengths, args.batch_tokens, args.n_seq)
                ]
                micro = [collate_reviews([train_ids[i] for i in p], [train_labels[i] for i in p], args.n_seq)
                         for p in parts]
                if soft is not None:  # self-training: soft targets for every review of the step
                    for b, p in zip(micro, parts):
                        b["soft"] = torch.tensor([soft[i] for i in p], dtype=torch.float32)
                # the step's review count over all processes normalizes the loss; the stop flag rides along
                counts = torch.tensor([sum(len(b["labels"]) for b in micro), stop.signum], dtype=torch.float64,
                                      device=device)
                n_step, signaled = all_sum(counts, world).tolist()
                if signaled:
                    stop.save_and_exit(save_state, resume, step, log)
                epoch_sums += side_by_side(  # each thread enters its own copy of the autocast context
                    lambda ps, n=n_step: train_step(model, ps, n, world, device, copy.copy(autocast), scaler),
                    micro,
                    threads,
                )
                ok = optimizer_step(model, optimizer, scheduler, scaler, args.clip)
                step, epoch_step = step + 1, epoch_step + 1
                if device.type == "cpu" and step % TRIM_EVERY == 0:
                    release_free_memory()  # the heap keeps long batches' pages; without this it grew all epoch
                bad_steps = 0 if ok else bad_steps + 1
                if not ok:
                    log(f"step {step}: NaN/inf loss, step skipped ({bad_steps} in a row)", file=sys.stderr)
                    if bad_steps >= args.max_bad_steps:
                        stop_bad_steps(step, bad_steps, resume, "training state")
                if args.save_steps and step % args.save_steps == 0 and epoch_step < len(batches):
                    save_state()

            # the end of an epoch: evaluate, log, keep the best-on-validation model, save the training state
            ev = (args.batch * 2, args.n_seq, device, autocast, rank, world)
            valid_loss, valid_acc = evaluate(raw_model, valid_ids, valid_labels, *ev) if valid_ids else (math.nan,) * 2
            test_loss, test_acc = evaluate(raw_model, test_ids, test_labels, *ev)
            loss_total, n = all_sum(epoch_sums.clone(), world).tolist()
            epoch, epoch_step = epoch + 1, 0
            epoch_sums.zero_()
            row = {"epoch": epoch, "train_loss": loss_total / n, "valid_loss": valid_loss, "valid_acc": valid_acc,
                   "test_loss": test_loss, "test_acc": test_acc, "elapsed_s": time.time() - t_start}
            is_best = best is None or not valid_ids or valid_acc > best["valid_acc"]  # no validation: keep the last
            if is_best:
                best = row
            if master:
                append_csv(log_csv, row)
                plot_csv(log_csv, os.path.join(args.log_dir, "loss.svg"), "epoch",
                         ["train_loss", "valid_loss", "test_loss"], "loss")
                plot_csv(log_csv, os.path.join(args.log_dir, "accuracy.svg"), "epoch", ["valid_acc", "test_acc"],
                         "accuracy")
                if is_best:
                    save_checkpoint(args.save, {
                        "model": raw_model.state_dict(), "config": config.to_dict(), "vocab_size": config.vocab_size,
                        "n_seq": args.n_seq, "epoch": epoch, "valid_acc": valid_acc, "test_acc": test_acc,
                    })
            save_state()
            saved = f" -> saved {args.save}" if is_best else ""
            log(f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid acc {valid_acc:.4f}, "
                f"test acc {test_acc:.4f}{saved}")
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory at step {step + 1} with --batch {args.batch}: lower --batch and raise --grad_accum "
            f"to keep the effective batch; the training state in {resume} is kept"
        ) from None
    finally:
        stop.restore()

    # the end of the run: --save holds the model, so the training state goes (running again starts afresh)
    if master and os.path.exists(resume):
        os.remove(resume)
    log(
        f"best epoch {best['epoch']} (valid acc {best['valid_acc']:.4f}): test accuracy {best['test_acc']:.4f}; "
        f"{time.time() - t_start:.0f} s; log {log_csv}"
    )
    finish_distributed(world)


if __name__ == "__main__":
    main_guard(main)
