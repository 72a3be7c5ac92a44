"""Pretrain BERT with masked LM + next sentence prediction on data.py's instances.

    python pretrain.py                      # CPU (bf16 autocast where the CPU has it)
    python pretrain.py --gpu 0              # one GPU
    python pretrain.py --epoch 10           # run again: resumes from --save and trains up to epoch 10
    python pretrain.py --pretrain hf_dir    # continue pretraining a Hugging Face BERT (export.py writes one)

Saves model, optimizer, scheduler, epoch, step, config and vocabulary size to --save after every
epoch; when --save exists, training resumes from it. Logs MLM loss/accuracy and NSP accuracy to
<log_dir>/log.csv and draws <log_dir>/loss.svg.
"""
import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import check_config, load_checkpoint, save_checkpoint
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForPreTraining, configure_optimizer, count_parameters
from store import PretrainStore, collate_pretrain
from training import append_csv, get_device, linear_warmup_decay, mixed_precision, plot_csv, set_seed, train_step
from vocab import load_vocab


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config_half.json", help="model config (vocab_size comes from --vocab)")
    p.add_argument("--vocab", default="kowiki.model", help="SentencePiece model from vocab.py")
    p.add_argument("--input", default="data/kowiki_bert.json", help="instances from data.py (JSON lines)")
    p.add_argument("--save", default="save_pretrain.pth", help="checkpoint to write, and to resume from when it exists")
    p.add_argument("--pretrain", default=None, help="initial weights: a pretrain.py checkpoint or a Hugging Face BERT directory; "
                   "ignored when resuming from --save")
    p.add_argument("--epoch", type=int, default=3, help="train until this many epochs are done")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.01, help="warmup steps, as a fraction of all steps")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps in all (0: no limit)")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument("--fp32", action="store_true", help="turn off mixed precision")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in the training process)")
    p.add_argument("--log_dir", default="runs/pretrain", help="where log.csv and loss.svg go")
    p.add_argument("--log_every", type=int, default=100, help="steps between log rows")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    if args.epoch < 1 or args.batch < 1:
        raise UserError("--epoch and --batch must be at least 1")
    require_file(args.config, "pass --config config_half.json or config.json")
    set_seed(args.seed)
    device = get_device(args.gpu)
    autocast, scaler, precision = mixed_precision(device, args.fp32)

    sp = load_vocab(args.vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    data = PretrainStore(args.input)
    if data.max_len > config.max_position_embeddings:
        raise UserError(f"{args.input} has instances of {data.max_len} tokens but {args.config} allows "
                        f"{config.max_position_embeddings} positions; rebuild with `python data.py --n_seq {config.max_position_embeddings}`")
    if data.max_id >= config.vocab_size:
        raise UserError(f"{args.input} has token id {data.max_id} but {args.vocab} has {config.vocab_size} pieces; "
                        "rebuild the instances with this vocab (`python data.py --vocab ...`)")

    model = BertForPreTraining(config).to(device)
    if args.pretrain and not os.path.exists(args.save):
        state = load_checkpoint(args.pretrain, "pass a pretrain.py checkpoint or a Hugging Face BERT directory")
        check_config(state, config, args.pretrain, args.config)
        weights = {k: v for k, v in state["model"].items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.startswith("cls.") for k in missing), (missing, unexpected)
        fresh = sorted({".".join(k.split(".")[:2]) for k in missing})  # heads a fine-tuned or BertModel checkpoint lacks
        print(f"starting from the weights of {args.pretrain}" + (f"; new random {', '.join(fresh)}" if fresh else ""))
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, device_type=device.type)
    steps_per_epoch = math.ceil(len(data) / args.batch)
    total_steps = steps_per_epoch * args.epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    warmup = max(1, int(args.warmup * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps))

    epoch, step = 0, 0
    if os.path.exists(args.save):
        state = load_checkpoint(args.save, "delete it or pass another --save to start afresh")
        check_config(state, config, args.save, args.config)
        if "optimizer" not in state:
            raise UserError(f"{args.save} is a fine-tuned model, not a pretraining checkpoint; pass another --save")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, step = state["epoch"], state["step"]
        print(f"resuming from {args.save}: {epoch} epochs, {step} steps done")
        if epoch >= args.epoch or (args.max_steps and step >= args.max_steps):
            print(f"nothing to do: {args.save} already has {epoch} epochs / {step} steps; raise --epoch to train more")
            return
    print(f"model: {count_parameters(model) / 1e6:.1f}M parameters, {config.num_hidden_layers} layers, "
          f"hidden {config.hidden_size}; {len(data):,} instances; {precision} on {device}; "
          f"{total_steps:,} steps of batch {args.batch}")

    os.makedirs(args.log_dir, exist_ok=True)
    log_csv = os.path.join(args.log_dir, "log.csv")
    if step == 0 and os.path.exists(log_csv):
        os.remove(log_csv)
    loader_gen = torch.Generator()
    model.train()
    t_start = t_log = time.time()
    while epoch < args.epoch and not (args.max_steps and step >= args.max_steps):
        loader_gen.manual_seed(args.seed + epoch)  # the same data order per epoch on resume
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, generator=loader_gen,
                                             collate_fn=collate_pretrain, num_workers=args.workers,
                                             pin_memory=device.type == "cuda", persistent_workers=False)
        sums = torch.zeros(5, device=device)  # mlm loss, mlm correct, mlm count, nsp loss, nsp correct
        seen, tokens = 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epoch}")
        for i, batch in enumerate(bar):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                mlm_logits, nsp_logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["mask_pos"])
            labels = batch["mask_label"]
            mlm_loss = F.cross_entropy(mlm_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
            # NSP class 0 = "B follows A", 1 = "B is random", as in Google's BERT and Hugging Face
            nsp_label = 1 - batch["is_next"]
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_label)
            train_step(model, optimizer, scheduler, scaler, mlm_loss + nsp_loss, args.clip)
            step += 1
            with torch.no_grad():
                valid = labels != -100
                sums += torch.stack([mlm_loss.detach() * len(labels), ((mlm_logits.argmax(-1) == labels) & valid).sum(),
                                     valid.sum(), nsp_loss.detach() * len(labels), (nsp_logits.argmax(-1) == nsp_label).sum()])
            seen += len(labels)
            tokens += int(batch["attention_mask"].sum())
            if step % args.log_every == 0 or i + 1 == len(loader) or step == args.max_steps:
                s = sums.tolist()  # one host sync per log row, not per step
                row = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                       "mlm_loss": s[0] / seen, "mlm_acc": s[1] / max(1, s[2]), "nsp_loss": s[3] / seen,
                       "nsp_acc": s[4] / seen, "tokens_per_s": tokens / (time.time() - t_log), "elapsed_s": time.time() - t_start}
                append_csv(log_csv, row)
                bar.set_postfix(mlm_loss=f"{row['mlm_loss']:.3f}", mlm_acc=f"{row['mlm_acc']:.3f}", nsp_acc=f"{row['nsp_acc']:.3f}")
                sums.zero_()
                seen, tokens, t_log = 0, 0, time.time()
            if args.max_steps and step >= args.max_steps:
                break
        epoch += 1
        save_checkpoint(args.save, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                                    "config": config.to_dict(), "vocab_size": config.vocab_size})
        plot_csv(log_csv, os.path.join(args.log_dir, "loss.svg"), "step", ["mlm_loss", "nsp_loss"], "loss")
        print(f"epoch {epoch}: saved {args.save} (step {step}); log {log_csv}")


if __name__ == "__main__":
    main_guard(main)
