"""A memory-mapped store of pretraining instances, built once from data.py's JSON lines.

A JSON-lines file of millions of instances does not fit in RAM as Python lists. The first run of
pretrain.py converts it, streaming, into flat binary arrays in `<input>.cache/`:

    tokens.bin     uint16  every instance's token ids, back to back
    tok_off.bin    int64   where instance i starts in tokens.bin (n + 1 entries)
    len_a.bin      uint16  length of `[CLS] A [SEP]`: segment ids are 0 up to it and 1 after
    is_next.bin    uint8
    mask_pos.bin   uint16  masked positions, back to back
    mask_label.bin uint16  the original ids at those positions
    mask_off.bin   int64   where instance i's masked positions start (n + 1 entries)
    meta.json      the source's size and mtime (a changed source is rebuilt), counts, max length and id

Later runs memory-map the arrays: RAM use does not grow with the number of instances.
"""

import contextlib
import json
import os
import random
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

from data import create_masked_lm_predictions
from errors import UserError, require_file
from training import padded_length

ARRAYS = {
    "tokens": np.uint16,
    "tok_off": np.int64,
    "len_a": np.uint16,
    "is_next": np.uint8,
    "mask_pos": np.uint16,
    "mask_label": np.uint16,
    "mask_off": np.int64,
}


def source_stamp(path):
    st = os.stat(path)
    return {"source_size": st.st_size, "source_mtime": st.st_mtime}


def parse_instance(line, path, lineno):
    """One JSON line -> (tokens, len_a, is_next, mask_pos, mask_label), or a one-line error naming the line."""
    where = f"{path}:{lineno}"
    try:
        d = json.loads(line)
        tokens, segment, is_next = d["tokens"], d["segment"], int(d["is_next"])
        mask_pos, mask_label = d["mask_pos"], d["mask_label"]
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: malformed JSON ({e.msg}); rebuild it with `python data.py`") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{where}: not a pretraining instance (bad or missing field {e}); rebuild it with `python data.py`"
        ) from None
    if len(tokens) != len(segment) or len(mask_pos) != len(mask_label) or not tokens:
        raise UserError(
            f"{where}: tokens/segment or mask_pos/mask_label lengths differ; rebuild it with `python data.py`"
        )
    len_a = segment.index(1) if 1 in segment else len(segment)
    if any(s != (i >= len_a) for i, s in enumerate(segment)) or is_next not in (0, 1):
        raise UserError(f"{where}: segment ids must be 0s then 1s and is_next 0 or 1; rebuild it with `python data.py`")
    if any(not 0 <= p < len(tokens) for p in mask_pos) or max(tokens) > 65535 or min(tokens) < 0:
        raise UserError(f"{where}: a masked position or token id is out of range; rebuild it with `python data.py`")
    return tokens, len_a, is_next, mask_pos, mask_label


def report_bad_lines(path, bad, skip):
    """Print every bad line (file:line: why) to stderr; without --skip_bad_lines stop with one line before any
    training."""
    for msg in bad:
        print(f"bad line: {msg}", file=sys.stderr)
    if bad and not skip:
        more = f" (and {len(bad) - 1} more bad lines, listed above)" if len(bad) > 1 else ""
        raise UserError(f"{bad[0]}{more}; or pass --skip_bad_lines to train without them")
    if bad:
        print(f"{path}: skipping {len(bad)} bad lines (--skip_bad_lines)", file=sys.stderr)


def read_meta(cache_dir):
    """A cache's meta.json as a dict, or None when there is no finished cache."""
    try:
        with open(os.path.join(cache_dir, "meta.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def is_current(meta, path):
    return meta is not None and {k: meta[k] for k in ("source_size", "source_mtime")} == source_stamp(path)


def build_cache(path, cache_dir, skip_bad_lines=False, flush_every=20000):
    """Stream the JSON lines of `path` into the binary arrays of `cache_dir`, built in a temp dir of this
    process and then renamed: two runs started at once on one file each build their own, and the later
    one keeps the cache the first put in place. Every bad line is collected, not just the first, so one
    pass over a large file names them all."""
    tmp = f"{cache_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write_arrays(path, tmp, skip_bad_lines, flush_every)
    except BaseException:  # a bad file, Ctrl-C: leave no half-built directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if is_current(read_meta(cache_dir), path):  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        os.replace(tmp, cache_dir)
    except OSError:  # another run renamed its cache into place just now
        shutil.rmtree(tmp, ignore_errors=True)


def write_arrays(path, tmp, skip_bad_lines, flush_every):
    buf = {name: [] for name in ARRAYS}
    n, n_tok, n_mask, max_len, max_id = 0, 0, 0, 0, 0
    bad = []
    buf["tok_off"].append(0)
    buf["mask_off"].append(0)

    def flush():
        for name, values in buf.items():
            if values:
                np.asarray(values, dtype=ARRAYS[name]).tofile(files[name])
                values.clear()

    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open(os.path.join(tmp, f"{name}.bin"), "wb")) for name in ARRAYS}
        f = stack.enter_context(open(path, encoding="utf-8"))
        with tqdm(
            total=os.path.getsize(path), unit="B", unit_scale=True, desc=f"caching {os.path.basename(path)}"
        ) as bar:
            for lineno, line in enumerate(f, 1):
                bar.update(len(line.encode("utf-8")))
                if not line.strip():
                    continue
                try:
                    tokens, len_a, is_next, mask_pos, mask_label = parse_instance(line, path, lineno)
                except UserError as e:
                    bad.append(str(e))
                    continue
                n += 1
                n_tok += len(tokens)
                n_mask += len(mask_pos)
                max_len, max_id = max(max_len, len(tokens)), max(max_id, max(tokens), max(mask_label, default=0))
                buf["tokens"].extend(tokens)
                buf["tok_off"].append(n_tok)
                buf["len_a"].append(len_a)
                buf["is_next"].append(is_next)
                buf["mask_pos"].extend(mask_pos)
                buf["mask_label"].extend(mask_label)
                buf["mask_off"].append(n_mask)
                if len(buf["tok_off"]) >= flush_every:
                    flush()
        flush()
    report_bad_lines(path, bad, skip_bad_lines)
    if n == 0:
        raise UserError(f"{path} holds no instances; rebuild it with `python data.py` on a non-empty corpus")
    meta = {**source_stamp(path), "n": n, "n_tokens": n_tok, "max_len": max_len, "max_id": max_id, "bad_lines": bad}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)


class PretrainStore(torch.utils.data.Dataset):
    """Instances of a data.py JSON-lines file, served from its memory-mapped cache."""

    def __init__(self, path, skip_bad_lines=False):
        require_file(path, "run `python data.py` to make it")
        self.cache_dir = path + ".cache"
        meta = read_meta(self.cache_dir)
        if not is_current(meta, path):
            build_cache(path, self.cache_dir, skip_bad_lines)
            meta = read_meta(self.cache_dir)
        else:  # a cache built with --skip_bad_lines: the same lines are still bad
            report_bad_lines(path, meta.get("bad_lines", []), skip_bad_lines)
        self.meta = meta
        self.n, self.max_len, self.max_id = meta["n"], meta["max_len"], meta["max_id"]
        self.arrays = None  # mapped lazily, so that DataLoader workers each open their own maps

    def _map(self):
        self.arrays = {
            name: np.memmap(os.path.join(self.cache_dir, f"{name}.bin"), dtype=dtype, mode="r")
            for name, dtype in ARRAYS.items()
        }

    def __len__(self):
        return self.n

    def lengths(self, chunk=1 << 22):
        """Every instance's length in tokens: n uint16, read from the offsets a chunk at a time (2 bytes an
        instance in memory, not the offsets' 8)."""
        off = np.memmap(os.path.join(self.cache_dir, "tok_off.bin"), dtype=ARRAYS["tok_off"], mode="r")
        out = np.empty(self.n, dtype=np.uint16)
        for i in range(0, self.n, chunk):
            out[i : i + chunk] = np.diff(off[i : i + chunk + 1])
        return out

    def __getitem__(self, i):
        if self.arrays is None:
            self._map()
        a = self.arrays
        t0, t1 = a["tok_off"][i], a["tok_off"][i + 1]
        m0, m1 = a["mask_off"][i], a["mask_off"][i + 1]
        return (
            a["tokens"][t0:t1].astype(np.int64),
            int(a["len_a"][i]),
            int(a["is_next"][i]),
            a["mask_pos"][m0:m1].astype(np.int64),
            a["mask_label"][m0:m1].astype(np.int64),
        )


class DynamicMasking(torch.utils.data.Dataset):
    """RoBERTa's dynamic masking: the instances of a PretrainStore with their masks drawn again, differently in
    every epoch, by data.py's rule (whole words, 80% [MASK] / 10% random / 10% unchanged). data.py's masks are
    undone first, so a file made with --dupe_factor 1 serves any number of epochs without repeating a mask.
    Set .epoch before each epoch's DataLoader is made. The masks depend on (seed, epoch, index) alone, so a
    resumed run draws the same ones."""

    def __init__(self, data, is_word_start, mask_prob, max_pred, seed):
        self.data, self.is_word_start, self.mask_prob, self.max_pred, self.seed = (
            data,
            is_word_start,
            mask_prob,
            max_pred,
            seed,
        )
        self.epoch = 0
        self.max_len = data.max_len

    def __len__(self):
        return len(self.data)

    def lengths(self):
        return self.data.lengths()  # masking leaves lengths alone

    def __getitem__(self, i):
        tokens, len_a, is_next, pos, label = self.data[i]
        tokens[pos] = label  # the text as it was before data.py masked it
        rng = random.Random(
            f"{self.seed}/{self.epoch}/{i}"
        )  # a str seed is hashed with SHA-512: the same in every process
        masked, pos, label = create_masked_lm_predictions(
            tokens.tolist(), self.mask_prob, self.max_pred, len(self.is_word_start), rng, self.is_word_start
        )
        return (
            np.array(masked, dtype=np.int64),
            len_a,
            is_next,
            np.array(pos, dtype=np.int64),
            np.array(label, dtype=np.int64),
        )


def collate_pretrain(batch, max_len=None):
    """Pad a list of instances to the longest in the batch, rounded up to a multiple of 16 within max_len (the
    longest instance of the data; no rounding when None); labels of padded mask slots are -100 (ignored).

    The rounding (training.padded_length, as train.py's) keeps the number of batch shapes small when
    micro-batches of sorted instances each have their own length."""
    B = len(batch)
    T = padded_length(max(len(b[0]) for b in batch), max_len)
    P = max(1, max(len(b[3]) for b in batch))
    input_ids = torch.zeros(B, T, dtype=torch.long)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    mask_pos = torch.zeros(B, P, dtype=torch.long)
    mask_label = torch.full((B, P), -100, dtype=torch.long)
    is_next = torch.zeros(B, dtype=torch.long)
    for i, (tokens, len_a, nxt, pos, label) in enumerate(batch):
        n, p = len(tokens), len(pos)
        input_ids[i, :n] = torch.from_numpy(tokens)
        token_type_ids[i, len_a:n] = 1
        attention_mask[i, :n] = 1
        mask_pos[i, :p] = torch.from_numpy(pos)
        mask_label[i, :p] = torch.from_numpy(label)
        is_next[i] = nxt
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "mask_pos": mask_pos,
        "mask_label": mask_label,
        "is_next": is_next,
    }
