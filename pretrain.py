"""Pretrain BERT with masked LM + next sentence prediction on data.py's instances (or ELECTRA's replaced-token
detection, --objective electra).

    python pretrain.py                      # CPU (bf16 autocast where the CPU has it)
    python pretrain.py --gpu 0              # one GPU
    python pretrain.py --epoch 10           # run again: resumes from --save and trains up to epoch 10
    python pretrain.py --pretrain hf_dir    # continue pretraining a Hugging Face BERT (export.py writes one)
    python pretrain.py --objective electra  # a small generator fills the masks, the BERT encoder spots its tokens

    torchrun --nproc_per_node 4 pretrain.py --gpu 0   # 4 GPUs, data-parallel (DDP); --batch is per process

Saves model, optimizer, scheduler, grad scaler, RNG states and the position in the data order to
--save after every epoch and every --save_steps steps; when --save exists, training resumes from
exactly there. SIGINT/SIGTERM save and exit. Logs MLM loss/accuracy and NSP accuracy to
<log_dir>/log.csv and draws <log_dir>/loss.svg (rank 0 only).
"""

import argparse
import copy
import functools
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from checkpoint import check_config, load_checkpoint, lock_checkpoint, restore_training, save_checkpoint
from data import word_starts
from errors import UserError, main_guard, require_file
from model import (
    BertConfig,
    BertForPreTraining,
    ElectraForPreTraining,
    configure_optimizer,
    count_parameters,
    generator_config,
)
from store import DynamicMasking, PretrainStore, collate_pretrain
from training import (
    StopSignal,
    all_sum,
    append_csv,
    backward,
    finish_distributed,
    gather_rng_states,
    ignore_sigint,
    keep_freed_memory,
    linear_warmup_decay,
    mixed_precision,
    optimizer_step,
    plot_csv,
    rank0_first,
    rank0_only,
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


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config_half.json", help="model config (vocab_size comes from --vocab)")
    p.add_argument("--vocab", default="kowiki.model", help="SentencePiece model from vocab.py")
    p.add_argument("--input", default="data/kowiki_bert.json", help="instances from data.py (JSON lines)")
    p.add_argument("--save", default="save_pretrain.pth", help="checkpoint to write, and to resume from when it exists")
    p.add_argument(
        "--pretrain",
        default=None,
        help="initial weights: a pretrain.py checkpoint or a Hugging Face BERT directory; "
        "ignored when resuming from --save",
    )
    p.add_argument(
        "--objective",
        choices=["mlm", "electra"],
        default="mlm",
        help="mlm: masked LM + next sentence prediction; electra: replaced-token detection (Clark et al. 2020) "
        "with a small masked-LM generator; the encoder (bert.*) is what train.py fine-tunes either way",
    )
    p.add_argument(
        "--gen_hidden_ratio",
        type=float,
        default=0.25,
        help="with --objective electra: the generator's hidden size as a share of the discriminator's "
        "(its intermediate size is 4x that, its heads about 64 wide, its layers as many)",
    )
    p.add_argument(
        "--disc_weight",
        type=float,
        default=50.0,
        help="with --objective electra: loss = generator MLM + this x discriminator loss (ELECTRA's 50)",
    )
    p.add_argument("--epoch", type=int, default=3, help="train until this many epochs are done")
    p.add_argument("--batch", type=int, default=32, help="instances per process per micro-batch")
    p.add_argument(
        "--grad_accum",
        type=int,
        default=1,
        help="micro-batches per optimizer step (effective batch: batch x grad_accum x processes); they are cut "
        "from the step's instances sorted by length, so short instances (one review each) pad less: the same "
        "step for less work",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.01, help="warmup steps, as a fraction of all steps")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps in all (0: no limit)")
    p.add_argument(
        "--save_steps", type=int, default=0, help="also save every this many optimizer steps (0: at epoch ends only)"
    )
    p.add_argument(
        "--keep_steps",
        default="",
        help="comma-separated steps whose weights are also kept, as SAVE_stepN.pth "
        "(for fine-tuning after N steps of one run)",
    )
    p.add_argument(
        "--dynamic_mask",
        action="store_true",
        help="draw new masks for every instance in every epoch (RoBERTa) "
        "instead of using data.py's; data.py --dupe_factor 1 is then enough",
    )
    p.add_argument(
        "--mask_prob",
        type=float,
        default=0.15,
        help="with --dynamic_mask: share of the tokens masked (at most "
        "round(longest instance x mask_prob) per instance, as data.py's default --max_pred)",
    )
    p.add_argument(
        "--eval_input",
        default=None,
        help="held-out instances from data.py (other text than --input): masked-LM "
        "loss/accuracy and NSP accuracy on them go to <log_dir>/eval.csv",
    )
    p.add_argument(
        "--eval_steps",
        type=int,
        default=0,
        help="evaluate every this many optimizer steps (0: at epoch ends and the last step only)",
    )
    p.add_argument(
        "--max_bad_steps", type=int, default=5, help="stop after this many NaN/inf losses in a row (each is skipped)"
    )
    p.add_argument(
        "--skip_bad_lines", action="store_true", help="train without the malformed lines of --input instead of stopping"
    )
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument("--fp32", action="store_true", help="turn off mixed precision")
    p.add_argument(
        "--step_threads", type=int, default=None,
        help="CPU: run a step's micro-batches in this many threads side by side, the cores shared among them "
        "(default 2 where torch has 2+ threads; 1: one after the other; always 1 on a GPU and under torchrun)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (0: load in the training process)"
    )
    p.add_argument("--log_dir", default="runs/pretrain", help="where log.csv and loss.svg go")
    p.add_argument("--log_every", type=int, default=100, help="steps between log rows")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def kept_path(save, step):
    """Where --keep_steps puts the weights after `step` steps: save_pretrain.pth -> save_pretrain_step1000.pth."""
    root, ext = os.path.splitext(save)
    return f"{root}_step{step}{ext or '.pth'}"


def epoch_batches(n, seed, epoch, global_batch, min_size):
    """The global batches of one epoch: a permutation that depends on (seed, epoch) alone, so a resumed run
    draws it again, cut into batches of `global_batch`; a last batch too small to give every process and
    micro-batch an instance (`min_size`) is dropped."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    batches = [perm[i : i + global_batch] for i in range(0, n, global_batch)]
    return [b for b in batches if len(b) >= min_size]


def check_fits(store, path, config, config_path, vocab_path):
    """The instances of `store` (read from `path`) fit the model's positions and vocabulary, or a one-line error."""
    if store.max_len > config.max_position_embeddings:
        raise UserError(
            f"{path} has instances of {store.max_len} tokens but {config_path} allows "
            f"{config.max_position_embeddings} positions; "
            f"rebuild with `python data.py --n_seq {config.max_position_embeddings}`"
        )
    if store.max_id >= config.vocab_size:
        raise UserError(
            f"{path} has token id {store.max_id} but {vocab_path} has {config.vocab_size} pieces; "
            "rebuild the instances with this vocab (`python data.py --vocab ...`)"
        )
    return store


def pretraining_losses(model, batch, autocast):
    """The summed masked-LM and NSP losses of a batch, and its counts for the logs (no gradient):
    [mlm loss, mlm correct, mlm targets, nsp loss, nsp correct, instances]."""
    with autocast:
        mlm_logits, nsp_logits = model(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["mask_pos"]
        )
    labels = batch["mask_label"]
    mlm_loss = F.cross_entropy(mlm_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    # NSP class 0 = "B follows A", 1 = "B is random", as in Google's BERT and Hugging Face
    nsp_label = 1 - batch["is_next"]
    nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_label, reduction="sum")
    with torch.no_grad():
        valid = labels != -100
        counts = torch.stack(
            [
                mlm_loss.detach(),
                ((mlm_logits.argmax(-1) == labels) & valid).sum(),
                valid.sum(),
                nsp_loss.detach(),
                (nsp_logits.argmax(-1) == nsp_label).sum(),
                torch.tensor(len(labels), device=labels.device),
            ]
        ).float()
    return mlm_loss, nsp_loss, counts


def electra_losses(model, batch, autocast, generator=None):
    """The summed generator masked-LM and discriminator losses of a batch, and its counts for the logs (no
    gradient): [gen loss, gen correct, gen targets, disc loss, disc correct, real tokens]. The discriminator
    is scored on every real token; pads are left out. `generator`: the RNG of the generator's samples."""
    with autocast:
        gen_logits, disc_logits, replaced = model(
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            batch["mask_pos"],
            batch["mask_label"],
            generator,
        )
    labels = batch["mask_label"]
    gen_loss = F.cross_entropy(gen_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    real = batch["attention_mask"].bool()
    disc_logits, replaced = disc_logits.float()[real], replaced[real].float()  # (real tokens,)
    disc_loss = F.binary_cross_entropy_with_logits(disc_logits, replaced, reduction="sum")
    with torch.no_grad():
        valid = labels != -100
        counts = torch.stack(
            [
                gen_loss.detach(),
                ((gen_logits.argmax(-1) == labels) & valid).sum(),
                valid.sum(),
                disc_loss.detach(),
                ((disc_logits > 0).float() == replaced).sum(),
                real.sum(),
            ]
        ).float()
    return gen_loss, disc_loss, counts


# log.csv and eval.csv name the two losses of each objective so: NAME_loss, NAME_acc
LOSS_NAMES = {"mlm": ("mlm", "nsp"), "electra": ("gen", "disc")}


@torch.no_grad()
def evaluate(model, data, batch, device, autocast, objective="mlm"):
    """Masked-LM loss and accuracy and NSP accuracy (electra: generator loss and accuracy and discriminator
    accuracy) on held-out instances, dropout off."""
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)
    draws = torch.Generator(device).manual_seed(0)  # the generator's samples: the same at every evaluation
    for b in torch.utils.data.DataLoader(data, batch_size=batch, collate_fn=collate_pretrain):
        b = {k: v.to(device) for k, v in b.items()}
        losses = (
            electra_losses(model, b, autocast, draws)
            if objective == "electra"
            else pretraining_losses(model, b, autocast)
        )
        sums += losses[2].double().cpu()
    model.train()
    a, b = LOSS_NAMES[objective]
    return {
        f"{a}_loss": (sums[0] / sums[2]).item(),
        f"{a}_acc": (sums[1] / sums[2]).item(),
        f"{b}_acc": (sums[4] / sums[5]).item(),
    }


def check_args(args):
    """-> the steps of --keep_steps, after the checks of the options."""
    if args.epoch < 1 or args.batch < 1 or args.grad_accum < 1:
        raise UserError("--epoch, --batch and --grad_accum must be at least 1")
    if args.step_threads is not None and args.step_threads < 1:
        raise UserError(f"--step_threads must be at least 1, got {args.step_threads}")
    if not 0 < args.mask_prob < 1:
        raise UserError(f"--mask_prob must be in (0, 1), got {args.mask_prob}")
    if not 0 < args.gen_hidden_ratio <= 1 or args.disc_weight < 0:
        raise UserError("--gen_hidden_ratio must be in (0, 1] and --disc_weight at least 0")
    require_file(args.config, "pass --config config_half.json or config.json")
    try:
        return {int(s) for s in args.keep_steps.split(",") if s.strip()}
    except ValueError:
        raise UserError(f"--keep_steps takes comma-separated step numbers, got {args.keep_steps!r}") from None


def load_instances(args, sp, config, rank, world):
    """-> the training instances (masked anew every epoch with --dynamic_mask) and the held-out ones (rank 0, or
    None). Rank 0 builds the binary cache of --input first; the others then read it."""
    data = rank0_first(lambda: PretrainStore(args.input, args.skip_bad_lines), rank, world)
    data = check_fits(data, args.input, config, args.config, args.vocab)
    eval_data = None
    if args.eval_input and rank == 0:
        eval_data = check_fits(PretrainStore(args.eval_input), args.eval_input, config, args.config, args.vocab)
    if args.dynamic_mask:
        max_pred = max(1, round(data.max_len * args.mask_prob))
        data = DynamicMasking(data, word_starts(sp), args.mask_prob, max_pred, args.seed)
    return data, eval_data


def load_initial_weights(model, args, config, log):
    """--pretrain's weights into the model: the encoder always; heads only where this objective has them in that
    shape (a classifier, an NSP head or a generator of another size stay behind, and those heads start afresh)."""
    state = load_checkpoint(args.pretrain, "pass a pretrain.py checkpoint or a Hugging Face BERT directory")
    check_config(state, config, args.pretrain, args.config)
    ours = model.state_dict()
    weights = {k: v for k, v in state["model"].items() if k in ours and v.shape == ours[k].shape}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and not any(k.startswith("bert.") for k in missing), (missing, unexpected)
    fresh = sorted({".".join(k.split(".")[:2]) for k in missing})
    log(f"starting from the weights of {args.pretrain}" + (f"; new random {', '.join(fresh)}" if fresh else ""))


def restore_state(path, args, config, gen_config, fields, model, optimizer, scheduler, scaler):
    """Load the checkpoint at `path` into the model, optimizer, scheduler and scaler after checking it can go on
    with this run's objective and `fields`; -> the checkpoint, for its counters."""
    state = load_checkpoint(path, "delete it or pass another --save to start afresh")
    check_config(state, config, path, args.config)
    if "optimizer" not in state:
        raise UserError(f"{path} is a fine-tuned model, not a pretraining checkpoint; pass another --save")
    saved = (state.get("objective", "mlm"), state.get("gen_config"))
    if saved != (args.objective, gen_config and gen_config.to_dict()):
        generator = f" and a generator of hidden size {saved[1]['hidden_size']}" if saved[1] else ""
        raise UserError(f"{path} was pretrained with --objective {saved[0]}{generator}; resume with the same "
                        "--objective and --gen_hidden_ratio, or pass another --save")
    # mid-epoch, the rest of the epoch's data order depends on these (global_batch: --batch x --grad_accum x processes)
    for name, value in fields.items():
        if state.get("epoch_step", 0) and state.get(name) != value:
            raise UserError(f"{path} stopped mid-epoch with {name}={state.get(name)} but this run has {name}={value}; "
                            "resume with the same, or delete it to start afresh")
    restore_training(state, model, optimizer, scheduler, scaler)
    return state


def train_step(model, micro_batches, counts, args, world, device, autocast, scaler):
    """Forward and backward over the micro-batches of one optimizer step (`counts`: masked tokens, instances and
    real tokens over all processes); -> this process's counts for the log: the losses' six and the tokens."""
    n_mask, n_inst, n_tok = counts
    sums = torch.zeros(7, device=device)
    for k, batch in enumerate(micro_batches):
        batch = {key: v.to(device, non_blocking=True) for key, v in batch.items()}
        if world > 1:
            model.require_backward_grad_sync = k == len(micro_batches) - 1  # DDP all-reduces on the last one only
        # means over the whole step (every process and micro-batch), so N processes x batch B x K micro-batches
        # make the gradient of one process with batch N*B*K; DDP divides by the number of processes, hence * world
        if args.objective == "electra":  # generator MLM + disc_weight x the discriminator's mean over real tokens
            gen_loss, disc_loss, log_counts = electra_losses(model, batch, autocast)
            loss = (gen_loss / max(n_mask, 1) + args.disc_weight * disc_loss / n_tok) * world
        else:
            mlm_loss, nsp_loss, log_counts = pretraining_losses(model, batch, autocast)
            loss = (mlm_loss / max(n_mask, 1) + nsp_loss / n_inst) * world
        backward(scaler.scale(loss) if scaler is not None else loss, model)  # training.backward: see side_by_side
        sums[:6] += log_counts
        sums[6] += batch["attention_mask"].sum()
    return sums


def main(argv=None):
    # arguments, checks, processes and precision
    args = get_args(argv)
    keep_steps = check_args(args)
    rank, world, device = setup_distributed(args.gpu)
    master = rank == 0  # only rank 0 prints, logs, plots and writes checkpoints
    log = print if master else lambda *a, **k: None
    set_seed(args.seed + rank)  # dropout differs per process; DDP copies rank 0's initial weights to the others
    autocast, scaler, precision = mixed_precision(device, args.fp32)
    if device.type == "cpu":
        keep_freed_memory()  # every step frees and reallocates the same tensors: keep their pages (7-15% faster)

    # model and data
    sp = load_vocab(args.vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    rank0_only(lambda: lock_checkpoint(args.save), rank, world)  # one run per checkpoint: a second stops here
    data, eval_data = load_instances(args, sp, config, rank, world)
    gen_config = generator_config(config, args.gen_hidden_ratio) if args.objective == "electra" else None
    model = (ElectraForPreTraining(config, gen_config) if gen_config else BertForPreTraining(config)).to(device)
    if args.pretrain and not os.path.exists(args.save):
        load_initial_weights(model, args, config, log)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, device_type=device.type)
    global_batch = args.batch * args.grad_accum * world  # instances per optimizer step, all processes together
    min_size = world * args.grad_accum
    steps_per_epoch = len(data) // global_batch + (len(data) % global_batch >= min_size)
    if steps_per_epoch == 0:
        raise UserError(f"{args.input} has {len(data)} instances, fewer than processes x --grad_accum ({min_size})")
    total_steps = steps_per_epoch * args.epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    warmup = max(1, int(args.warmup * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps))

    # resume: epochs done, optimizer steps done, steps done in the current epoch
    epoch, step, epoch_step, rng = 0, 0, 0, None
    fields = {"global_batch": global_batch, "instances": len(data), "seed": args.seed}
    if os.path.exists(args.save):
        state = restore_state(args.save, args, config, gen_config, fields, model, optimizer, scheduler, scaler)
        epoch, step, epoch_step, rng = state["epoch"], state["step"], state.get("epoch_step", 0), state.get("rng")
        into = f" ({epoch_step} into epoch {epoch + 1})" if epoch_step else ""
        log(f"resuming from {args.save}: {epoch} epochs, {step} steps done{into}")
        if epoch >= args.epoch or (args.max_steps and step >= args.max_steps):
            log(f"nothing to do: {args.save} already has {epoch} epochs / {step} steps; raise --epoch to train more")
            return
    if rng and len(rng) == world:
        set_rng_state(rng[rank])  # dropout goes on with the masks it would have drawn
    elif rng:
        log(f"note: {args.save} was written by {len(rng)} processes, this run has {world}; dropout draws new masks")
    electra = f" (ELECTRA, generator hidden {gen_config.hidden_size})" if gen_config else ""
    threads = step_threads(args.step_threads, device, world)
    side = f"; {threads} threads side by side" if threads > 1 else ""
    log(f"model: {count_parameters(model) / 1e6:.1f}M parameters, {config.num_hidden_layers} layers, hidden "
        f"{config.hidden_size}{electra}; {len(data):,} instances; {precision} on {device}; {total_steps:,} steps of "
        f"effective batch {global_batch} ({args.batch} x {args.grad_accum} micro-batches x {world} processes{side})")
    log_csv, eval_csv = os.path.join(args.log_dir, "log.csv"), os.path.join(args.log_dir, "eval.csv")
    if master:
        os.makedirs(args.log_dir, exist_ok=True)
        for path in (log_csv, eval_csv):
            if step == 0 and os.path.exists(path):
                os.remove(path)
            truncate_csv(path, "step", step)  # rows logged after the checkpoint will come again
    raw_model = model
    if world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save():
        states = gather_rng_states(world)  # every rank takes part; rank 0 writes
        if master:
            save_checkpoint(args.save, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "step": step, "epoch_step": epoch_step, "rng": states, "config": config.to_dict(),
                "vocab_size": config.vocab_size, "objective": args.objective,
                "gen_config": gen_config and gen_config.to_dict(), **fields,
            })

    # the loop: steps over a fresh permutation every epoch; log rows, held-out evaluation and saves along the way
    # micro-batches cut from a step's instances sorted by length pad less; padded to multiples of 16
    lengths = data.lengths() if args.grad_accum > 1 else None
    collate = functools.partial(collate_pretrain, max_len=data.max_len)
    stop = StopSignal()
    loader_gen = torch.Generator()  # the DataLoader seeds its workers from this, not from the RNG dropout uses
    model.train()
    # mlm loss, mlm correct, mlm count, nsp loss, nsp correct, instances, tokens, skipped steps
    # (electra: gen loss, gen correct, gen count, disc loss, disc correct, real tokens, tokens, skipped steps)
    sums = torch.zeros(8, device=device)
    first, second = LOSS_NAMES[args.objective]  # the log's column names
    bad_steps = 0
    t_start = t_log = time.time()
    try:
        while epoch < args.epoch and not (args.max_steps and step >= args.max_steps):
            batches = epoch_batches(len(data), args.seed, epoch, global_batch, min_size)
            if args.dynamic_mask:
                data.epoch = epoch  # before the DataLoader copies the dataset into its workers
            micro = [mb for b in batches[epoch_step:] for mb in split_step(b, rank, world, args.grad_accum, lengths)]
            loader = torch.utils.data.DataLoader(
                data, batch_sampler=micro, collate_fn=collate, num_workers=args.workers,
                pin_memory=device.type == "cuda", generator=loader_gen, worker_init_fn=ignore_sigint,
            )
            it = iter(loader)
            bar = tqdm(zip(*[it] * args.grad_accum), desc=f"epoch {epoch + 1}/{args.epoch}", total=len(batches),
                       initial=epoch_step, disable=not master)
            for micro_batches in bar:  # the micro-batches of one optimizer step
                # the step's masked-token, instance and real-token counts over all processes normalize the losses;
                # the stop flag rides along
                counts = torch.tensor([sum(int((b["mask_label"] != -100).sum()) for b in micro_batches),
                                       sum(len(b["is_next"]) for b in micro_batches),
                                       sum(int(b["attention_mask"].sum()) for b in micro_batches), stop.signum],
                                      dtype=torch.float64, device=device)
                *counts, signaled = all_sum(counts, world).tolist()
                if signaled:
                    stop.save_and_exit(save, args.save, step, log)
                sums[:7] += side_by_side(  # each thread enters its own copy of the autocast context
                    lambda mb, c=counts: train_step(model, mb, c, args, world, device, copy.copy(autocast), scaler),
                    micro_batches,
                    threads,
                )
                ok = optimizer_step(model, optimizer, scheduler, scaler, args.clip)
                step, epoch_step = step + 1, epoch_step + 1
                bad_steps = 0 if ok else bad_steps + 1
                if not ok:
                    sums[7] += 1
                    log(f"step {step}: NaN/inf loss, step skipped ({bad_steps} in a row)", file=sys.stderr)
                    if bad_steps >= args.max_bad_steps:
                        stop_bad_steps(step, bad_steps, args.save, "checkpoint")
                last = epoch_step == len(batches)
                at_max = bool(args.max_steps) and step >= args.max_steps
                if step % args.log_every == 0 or last or at_max:
                    s = all_sum(sums.clone(), world).tolist()  # one host sync per log row, not per step
                    if master:
                        row = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                               f"{first}_loss": s[0] / max(1, s[2]), f"{first}_acc": s[1] / max(1, s[2]),
                               f"{second}_loss": s[3] / s[5], f"{second}_acc": s[4] / s[5],
                               "tokens_per_s": s[6] / (time.time() - t_log), "skipped": int(s[7]),
                               "elapsed_s": time.time() - t_start}
                        append_csv(log_csv, row)
                        shown = (f"{first}_loss", f"{first}_acc", f"{second}_acc")
                        bar.set_postfix({k: f"{row[k]:.3f}" for k in shown})
                    sums.zero_()
                    t_log = time.time()
                if eval_data is not None and (last or at_max or (args.eval_steps and step % args.eval_steps == 0)):
                    held_out = evaluate(raw_model, eval_data, args.batch, device, autocast, args.objective)
                    append_csv(eval_csv, {"epoch": epoch + 1, "step": step, **held_out})
                    tqdm.write(f"step {step}: held-out " + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items()))
                if last:
                    epoch, epoch_step = epoch + 1, 0
                if last or at_max or (args.save_steps and step % args.save_steps == 0):
                    save()
                if step in keep_steps and master:
                    save_checkpoint(kept_path(args.save, step), {
                        "model": raw_model.state_dict(), "step": step, "config": config.to_dict(),
                        "vocab_size": config.vocab_size, "objective": args.objective,
                    })
                if last and master:
                    losses = [f"{first}_loss", f"{second}_loss"]
                    plot_csv(log_csv, os.path.join(args.log_dir, "loss.svg"), "step", losses, "loss")
                    print(f"epoch {epoch}: saved {args.save} (step {step}); log {log_csv}")
                if at_max:
                    break
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory at step {step + 1} with --batch {args.batch}: lower --batch and raise "
                        f"--grad_accum to keep the effective batch; {args.save} holds the last checkpoint") from None
    finally:
        stop.restore()

    # the end of the run
    finish_distributed(world)


if __name__ == "__main__":
    main_guard(main)
