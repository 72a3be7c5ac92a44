"""The Naver sentiment movie corpus (NSMC): reading its tab-separated files and batching reviews."""

import csv

import numpy as np
import pandas as pd
import torch

from errors import UserError, require_file
from training import padded_length
from vocab import CLS_ID, SEP_ID

LABELS = ("negative", "positive")  # label 0 and 1, as predict.py prints them


def read_nsmc(path):
    """-> (reviews, labels) from an NSMC file (`id<TAB>document<TAB>label`); empty reviews are kept as ''."""
    require_file(
        path, "run `python download.py --what nsmc`, or use data/sample/ratings_train.txt and ratings_test.txt"
    )
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; an NSMC file starts with the header 'id<TAB>document<TAB>label'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not an NSMC file: {str(e).strip().splitlines()[-1]}") from None
    if list(df.columns) != ["id", "document", "label"]:
        raise UserError(f"{path}: expected the header 'id<TAB>document<TAB>label', got {'<TAB>'.join(df.columns)!r}")
    if df.empty:
        raise UserError(f"{path} has the header but no reviews")
    bad = ~df["label"].isin(["0", "1"])
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +1 header, +1 one-based
        raise UserError(f"{path}:{line}: label must be 0 or 1, got {df['label'].iloc[line - 2]!r}")
    return df["document"].tolist(), df["label"].astype(int).tolist()


def valid_split(n, share, seed):
    """-> (training indices, validation indices) of n reviews: a seeded draw of round(share * n) for validation.
    train.py and baseline.py hold out the same reviews with the same --valid and --valid_seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = round(share * n)
    return perm[n_valid:], perm[:n_valid]


def encode_reviews(sp, reviews, n_seq, chunk=10000):
    """`[CLS] review [SEP]` ids (int32), the review cut to fit n_seq. Encoded `chunk` reviews at a time: the
    Python lists sp.encode returns for all 150,000 training reviews at once took 100 MB more at the peak."""
    out = []
    for i in range(0, len(reviews), chunk):
        out += [
            np.array([CLS_ID, *ids[: n_seq - 2], SEP_ID], dtype=np.int32) for ids in sp.encode(reviews[i : i + chunk])
        ]
    return out


def length_batches(lengths, batch, rng, pool=50):
    """Shuffled batches of reviews of similar length: shuffle, sort each pool of `pool` batches by length,
    cut it into batches, shuffle the batches. NSMC reviews average 26 tokens but a random batch of
    128 pads to about 100, so this cuts the work of an epoch about 3x."""
    order = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(order), batch * pool):
        chunk = order[i : i + batch * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch] for j in range(0, len(chunk), batch)]
    return [batches[k] for k in rng.permutation(len(batches))]


def default_batch_tokens(device):
    """train.py's --batch_tokens when not given: parts of at most 2048 padded tokens on a CPU (its memory is the
    user's RAM: a whole bf16 epoch peaked at 1.32-1.33 GB; 4096 was no faster with packing and peaked at 1.64-1.68 GB
    on 40,000 reviews), one part on a GPU (0)."""
    return 2048 if device.type == "cpu" else 0


def token_split(idx, lengths, max_tokens, n_seq=None):
    """Cut one batch (review indices) into as few equal parts as keep each under max_tokens padded tokens.

    The gradients of the parts add up to the batch's (the loss is a sum over reviews), so a step is the same
    step, but the activations held for the backward pass follow max_tokens, not the longest batch: a batch of
    128 reviews of 128 tokens held 1.2 GB of them. 0 or None: one part."""
    if not max_tokens:
        return [idx]
    T = padded_length(int(max(lengths[i] for i in idx)), n_seq)
    parts = min(len(idx), -(-len(idx) * T // max_tokens))
    return [list(p) for p in np.array_split(np.asarray(idx), parts)]


PAD_MULTIPLE = 16  # train.py's batches: the longest review rounded up to a multiple of this (collate_reviews)


def collate_reviews(ids, labels=None, n_seq=None, multiple=PAD_MULTIPLE):
    """A batch padded to its longest review (pad id 0), rounded up to a multiple of `multiple` within n_seq
    (16; predict.py's training.pad_multiple: 1 in fp32 on a CPU); labels 0 when not given.

    The rounding keeps the number of distinct batch shapes small: the CPU's bf16 kernels are built and
    cached per shape, and a shape per length grew a fine-tuning run's memory from 0.75 to 2+ GB."""
    T = padded_length(max(len(x) for x in ids), n_seq, multiple)
    input_ids = torch.zeros(len(ids), T, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.from_numpy(x)
    labels = torch.tensor(labels if labels is not None else [0] * len(ids), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}
