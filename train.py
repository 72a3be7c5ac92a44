"""Fine-tune BERT on NSMC (Naver movie review sentiment) and report test accuracy.

    python train.py --pretrain save_pretrain.pth          # from a pretrained checkpoint
    python train.py                                       # from scratch (random weights)
    python train.py --pretrain save_pretrain.pth --gpu 0

A --valid share of the training file is held out; the epoch with the best validation accuracy is
saved to --save, so the test file never picks the model. Test accuracy is reported every epoch.
Writes <log_dir>/log.csv, loss.svg and accuracy.svg. Predict with the result: `python predict.py "..."`.
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import check_config, encoder_weights, load_checkpoint, save_checkpoint
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForSequenceClassification, configure_optimizer, count_parameters
from nsmc import collate_reviews, encode_reviews, length_batches, read_nsmc
from training import append_csv, get_device, linear_warmup_decay, mixed_precision, plot_csv, set_seed, train_step
from vocab import load_vocab


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config_half.json", help="model config; must match --pretrain's")
    p.add_argument("--vocab", default="kowiki.model", help="SentencePiece model from vocab.py")
    p.add_argument("--train", default="data/ratings_train.txt", help="NSMC training file (id, document, label)")
    p.add_argument("--test", default="data/ratings_test.txt", help="NSMC test file")
    p.add_argument("--pretrain", default=None, help="checkpoint from pretrain.py; random weights when left out")
    p.add_argument("--save", default="save_best.pth", help="where the best-on-validation model goes")
    p.add_argument("--epoch", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup steps, as a fraction of all steps")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--n_seq", type=int, default=None, help="reviews are cut to this many tokens (default: 128 or the config's positions)")
    p.add_argument("--valid", type=float, default=0.05, help="share of --train held out to pick the best epoch")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument("--fp32", action="store_true", help="turn off mixed precision")
    p.add_argument("--log_dir", default="runs/train", help="where log.csv, loss.svg and accuracy.svg go")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model, ids, labels, batch, device, autocast):
    """-> (mean loss, accuracy). Reviews are sorted by length so each batch pads little."""
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    loss, correct = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        b = {k: v.to(device) for k, v in collate_reviews([ids[j] for j in idx], [labels[j] for j in idx]).items()}
        with autocast:
            logits = model(b["input_ids"], attention_mask=b["attention_mask"]).float()
        loss += F.cross_entropy(logits, b["labels"], reduction="sum").item()
        correct += (logits.argmax(-1) == b["labels"]).sum().item()
    model.train()
    return loss / len(ids), correct / len(ids)


def main(argv=None):
    args = get_args(argv)
    if args.epoch < 1 or args.batch < 1 or not 0 <= args.valid < 1:
        raise UserError("--epoch and --batch must be at least 1 and --valid in [0, 1)")
    require_file(args.config, "pass --config config_half.json or config.json")
    set_seed(args.seed)
    device = get_device(args.gpu)
    autocast, scaler, precision = mixed_precision(device, args.fp32)

    sp = load_vocab(args.vocab)
    config = BertConfig.from_json_file(args.config, vocab_size=sp.get_piece_size())
    args.n_seq = args.n_seq or min(128, config.max_position_embeddings)
    if args.n_seq > config.max_position_embeddings:
        raise UserError(f"--n_seq {args.n_seq} is above the {config.max_position_embeddings} positions of {args.config}")
    model = BertForSequenceClassification(config)
    if args.pretrain:
        state = load_checkpoint(args.pretrain)
        check_config(state, config, args.pretrain, args.config)
        missing, unexpected = model.load_state_dict(encoder_weights(state), strict=False)
        assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
        done = f" ({state['epoch']} pretraining epochs, {state['step']} steps)" if "step" in state else ""
        print(f"fine-tuning from {args.pretrain}{done}")
    else:
        print("no --pretrain given: training from scratch (random weights)")
    model.to(device)

    reviews, labels = read_nsmc(args.train)
    test_reviews, test_labels = read_nsmc(args.test)
    perm = np.random.default_rng(args.seed).permutation(len(reviews))
    n_valid = round(args.valid * len(reviews))
    valid_idx, train_idx = perm[:n_valid], perm[n_valid:]
    ids = encode_reviews(sp, reviews, args.n_seq)
    test_ids = encode_reviews(sp, test_reviews, args.n_seq)
    train_ids, train_labels = [ids[i] for i in train_idx], [labels[i] for i in train_idx]
    valid_ids, valid_labels = [ids[i] for i in valid_idx], [labels[i] for i in valid_idx]
    print(f"model: {count_parameters(model) / 1e6:.1f}M parameters; {len(train_ids):,} train / {len(valid_ids):,} valid / "
          f"{len(test_ids):,} test reviews; {precision} on {device}")

    lengths = np.array([len(x) for x in train_ids])
    batch_rng = np.random.default_rng(args.seed + 1)
    steps_per_epoch = len(length_batches(lengths, args.batch, np.random.default_rng(0)))  # the count does not depend on the draw
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, device_type=device.type)
    total_steps = steps_per_epoch * args.epoch
    warmup = max(1, int(args.warmup * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps))

    os.makedirs(args.log_dir, exist_ok=True)
    log_csv = os.path.join(args.log_dir, "log.csv")
    if os.path.exists(log_csv):
        os.remove(log_csv)
    best = None
    t_start = time.time()
    model.train()
    for epoch in range(1, args.epoch + 1):
        loss_sum, n = torch.zeros((), device=device), 0
        for idx in tqdm(length_batches(lengths, args.batch, batch_rng), desc=f"epoch {epoch}/{args.epoch}"):
            b = collate_reviews([train_ids[i] for i in idx], [train_labels[i] for i in idx])
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
            with autocast:
                logits = model(b["input_ids"], attention_mask=b["attention_mask"])
            loss = F.cross_entropy(logits.float(), b["labels"])
            train_step(model, optimizer, scheduler, scaler, loss, args.clip)
            loss_sum += loss.detach() * len(b["labels"])
            n += len(b["labels"])
        valid_loss, valid_acc = evaluate(model, valid_ids, valid_labels, args.batch * 2, device, autocast) if valid_ids else (float("nan"), float("nan"))
        test_loss, test_acc = evaluate(model, test_ids, test_labels, args.batch * 2, device, autocast)
        row = {"epoch": epoch, "train_loss": loss_sum.item() / n, "valid_loss": valid_loss, "valid_acc": valid_acc,
               "test_loss": test_loss, "test_acc": test_acc, "elapsed_s": time.time() - t_start}
        append_csv(log_csv, row)
        plot_csv(log_csv, os.path.join(args.log_dir, "loss.svg"), "epoch", ["train_loss", "valid_loss", "test_loss"], "loss")
        plot_csv(log_csv, os.path.join(args.log_dir, "accuracy.svg"), "epoch", ["valid_acc", "test_acc"], "accuracy")
        # with no validation share, the last epoch is kept
        is_best = best is None or not valid_ids or valid_acc > best["valid_acc"]
        if is_best:
            best = row
            save_checkpoint(args.save, {"model": model.state_dict(), "config": config.to_dict(), "vocab_size": config.vocab_size,
                                        "n_seq": args.n_seq, "epoch": epoch, "valid_acc": valid_acc, "test_acc": test_acc})
        print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid acc {valid_acc:.4f}, test acc {test_acc:.4f}"
              + (f" -> saved {args.save}" if is_best else ""))
    print(f"best epoch {best['epoch']} (valid acc {best['valid_acc']:.4f}): test accuracy {best['test_acc']:.4f}; "
          f"{time.time() - t_start:.0f} s; log {log_csv}")


if __name__ == "__main__":
    main_guard(main)
