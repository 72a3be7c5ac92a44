"""The Naver sentiment movie corpus (NSMC): reading its tab-separated files and batching reviews."""
import csv

import numpy as np
import pandas as pd
import torch

from errors import UserError, require_file
from vocab import CLS_ID, SEP_ID


def read_nsmc(path):
    """-> (reviews, labels) from an NSMC file (`id<TAB>document<TAB>label`); empty reviews are kept as ''."""
    require_file(path, "run `python download.py --what nsmc`, or use data/sample/ratings_train.txt and ratings_test.txt")
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not an NSMC file: {str(e).strip().splitlines()[-1]}") from None
    if list(df.columns) != ["id", "document", "label"]:
        raise UserError(f"{path}: expected the header 'id<TAB>document<TAB>label', got {'<TAB>'.join(df.columns)!r}")
    bad = ~df["label"].isin(["0", "1"])
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +1 header, +1 one-based
        raise UserError(f"{path}:{line}: label must be 0 or 1, got {df['label'].iloc[line - 2]!r}")
    return df["document"].tolist(), df["label"].astype(int).tolist()


def encode_reviews(sp, reviews, n_seq):
    """`[CLS] review [SEP]` ids, the review cut to fit n_seq."""
    return [np.array([CLS_ID] + ids[: n_seq - 2] + [SEP_ID], dtype=np.int64) for ids in sp.encode(reviews)]


class ReviewDataset(torch.utils.data.Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], self.labels[i]


def collate_reviews(batch):
    """Pad to the longest review in the batch (reviews are short: most batches are far below n_seq)."""
    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros(len(batch), T, dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.from_numpy(ids)
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}
