"""Does a checkpoint use its context, and the order of its words? Evaluate it on text as it is, with each
segment's pieces shuffled, and (masked LM) with all context replaced by random pieces.

    python probe.py --pretrain save_pretrain.pth --input heldout.json --vocab kowiki.model   # masked LM or ELECTRA
    python probe.py --save save_best.pth --test data/ratings_test.txt --vocab kowiki.model   # NSMC classifier

Masked LM: held-out loss and accuracy of data.py instances (text the model was not pretrained on) as they
are; with the pieces inside `[CLS] A [SEP]` and `B [SEP]` shuffled (each masked piece moves with its
target); and with every piece that is neither a target nor [CLS]/[SEP] replaced by a random one. A model
that has learned only the unigram distribution scores the same on all three; one that uses context but
not order scores the same as is and shuffled. An ELECTRA checkpoint (`pretrain.py --objective electra`) is
probed the same way: its generator's masked-LM loss and accuracy, and its discriminator's accuracy at telling
the generator's replacements from the original pieces (on every real token). Classifier: test accuracy as is
and with each review's pieces shuffled. Everything is seeded, so a rerun prints the same figures.
"""

import argparse
import random

import numpy as np
import torch

from checkpoint import check_config, load_checkpoint
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, ElectraForPreTraining, generator_config
from nsmc import encode_reviews, read_nsmc
from store import PretrainStore
from training import mixed_precision
from vocab import CLS_ID, N_SPECIAL, SEP_ID, load_vocab


def shuffle_segments(tokens, len_a, pos, rng):
    """-> (tokens, positions of the same targets): the pieces of A and of B each permuted in place."""
    n = len(tokens)
    perm = np.arange(n)  # new position k holds the piece from old position perm[k]
    for lo, hi in ((1, len_a - 1), (len_a, n - 1)):  # inside [CLS] A [SEP] and B [SEP]
        if hi - lo > 1:
            perm[lo:hi] = lo + rng.permutation(hi - lo)
    where = np.empty(n, dtype=np.int64)
    where[perm] = np.arange(n)  # old position -> new position
    return tokens[perm], where[pos]


def replace_context(tokens, pos, vocab_size, rng):
    """-> tokens with every piece that is not a target, [CLS] or [SEP] drawn at random."""
    keep = np.isin(tokens, (CLS_ID, SEP_ID))
    keep[pos] = True
    return np.where(keep, tokens, rng.integers(N_SPECIAL, vocab_size, len(tokens)))


class Probed(torch.utils.data.Dataset):
    """The instances of a PretrainStore, shuffled ("shuffled") or with random context ("no context")."""

    def __init__(self, data, mode, vocab_size, seed=0):
        self.data, self.mode, self.vocab_size, self.seed = data, mode, vocab_size, seed

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        tokens, len_a, is_next, pos, label = self.data[i]
        rng = np.random.default_rng([self.seed, i])
        if self.mode == "shuffled":
            tokens, pos = shuffle_segments(tokens, len_a, pos, rng)
            order = np.argsort(pos)  # positions stay ascending, as data.py writes them
            pos, label = pos[order], label[order]
        elif self.mode == "no context":
            tokens = replace_context(tokens, pos, self.vocab_size, rng)
        return tokens, len_a, is_next, pos, label


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", default=None, help="a pretrain.py checkpoint: probe its masked LM on --input")
    p.add_argument(
        "--input", default=None, help="held-out instances from data.py (text the model was not pretrained on)"
    )
    p.add_argument("--save", default=None, help="a train.py checkpoint: probe its test accuracy on --test")
    p.add_argument("--test", default="data/ratings_test.txt", help="NSMC test file (with --save)")
    p.add_argument("--vocab", default="kowiki.model", help="the SentencePiece model the checkpoint was trained with")
    p.add_argument("--n_seq", type=int, default=128, help="reviews are cut to this many tokens (with --save)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if (args.pretrain is None) == (args.save is None):
        p.error("pass one of --pretrain (with --input) or --save (with --test)")
    if args.pretrain and not args.input:
        p.error("--pretrain needs --input: held-out instances from data.py")
    return args


def load_model(path, cls, sp, hint):
    """-> the model of checkpoint `path`: cls, or ElectraForPreTraining for an ELECTRA pretraining checkpoint (its
    generator's size read from its weights: kept --keep_steps checkpoints do not store the generator's config)."""
    state = load_checkpoint(path, hint)
    config = BertConfig.from_dict(state["config"], vocab_size=sp.get_piece_size())
    check_config(state, config, path)  # the vocab size alone can differ
    project = state["model"].get("generator.embeddings_project.weight")
    if cls is BertForPreTraining and state.get("objective") == "electra" and project is not None:
        model = ElectraForPreTraining(config, generator_config(config, project.shape[0] / config.hidden_size))
    else:
        model = cls(config)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or (missing and cls is BertForSequenceClassification):
        raise UserError(
            f"{path} is not a {'pretrain.py' if cls is BertForPreTraining else 'train.py'} checkpoint; {hint}"
        )
    return model


def main(argv=None):
    args = get_args(argv)
    device = torch.device(f"cuda:{args.gpu}" if args.gpu is not None else "cpu")
    autocast, _, precision = mixed_precision(device, False)
    sp = load_vocab(args.vocab)
    rows = []
    if args.pretrain:
        from pretrain import check_fits, evaluate  # the held-out evaluation pretrain.py --eval_input writes

        model = load_model(args.pretrain, BertForPreTraining, sp, "pass a pretrain.py checkpoint").to(device)
        data = check_fits(PretrainStore(args.input), args.input, model.config, args.pretrain, args.vocab)
        objective = "electra" if isinstance(model, ElectraForPreTraining) else "mlm"
        for mode in ("as is", "shuffled", "no context"):
            d = data if mode == "as is" else Probed(data, mode, sp.get_piece_size(), args.seed)
            r = evaluate(model, d, args.batch, device, autocast, objective)
            if objective == "electra":
                rows.append((mode, f"generator masked-LM loss {r['gen_loss']:.4f}", f"accuracy {r['gen_acc']:.4f}",
                             f"discriminator accuracy {r['disc_acc']:.4f}"))
            else:
                rows.append((mode, f"masked-LM loss {r['mlm_loss']:.4f}", f"accuracy {r['mlm_acc']:.4f}"))
        what = f"{args.pretrain} on {len(data):,} instances of {args.input}"
    else:
        from train import evaluate

        require_file(args.test, "pass --test, an NSMC file (id, document, label)")
        model = load_model(args.save, BertForSequenceClassification, sp, "pass a train.py checkpoint").to(device)
        reviews, labels = read_nsmc(args.test)
        ids = encode_reviews(sp, reviews, args.n_seq)
        rng = random.Random(args.seed)
        shuffled = [np.concatenate([x[:1], rng.sample(list(x[1:-1]), len(x) - 2), x[-1:]]) for x in ids]
        for mode, d in (("as is", ids), ("shuffled", shuffled)):
            loss, acc = evaluate(model, d, labels, args.batch, args.n_seq, device, autocast)
            rows.append((mode, f"loss {loss:.4f}", f"accuracy {acc:.4f}"))
        what = f"{args.save} on the {len(ids):,} reviews of {args.test}"
    print(f"{what} ({precision} on {device}):")
    for row in rows:
        print("  " + "\t".join(row))


if __name__ == "__main__":
    main_guard(main)
