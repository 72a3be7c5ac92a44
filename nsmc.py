"""The Naver sentiment movie corpus (NSMC): reading its tab-separated files and batching reviews."""

import csv

import numpy as np
import pandas as pd
import torch

from errors import UserError, require_file
from vocab import CLS_ID, SEP_ID


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


def encode_reviews(sp, reviews, n_seq):
    """`[CLS] review [SEP]` ids, the review cut to fit n_seq."""
    return [np.array([CLS_ID] + ids[: n_seq - 2] + [SEP_ID], dtype=np.int64) for ids in sp.encode(reviews)]


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


def collate_reviews(ids, labels=None, n_seq=None):
    """A batch padded to its longest review (pad id 0), rounded up to a multiple of 16 within n_seq; labels 0
    when not given.

    The rounding keeps the number of distinct batch shapes small: the CPU's bf16 kernels are built and
    cached per shape, and a shape per length grew a fine-tuning run's memory from 0.75 to 2+ GB."""
    T = max(len(x) for x in ids)
    if n_seq:
        T = min(-(-T // 16) * 16, max(T, n_seq))
    input_ids = torch.zeros(len(ids), T, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.from_numpy(x)
    labels = torch.tensor(labels if labels is not None else [0] * len(ids), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}
