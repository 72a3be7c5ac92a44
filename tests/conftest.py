import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the scripts are top-level modules, not a package

SAMPLE_CORPUS = os.path.join(ROOT, "data", "sample", "kowiki-sample.txt.xz")


@pytest.fixture(scope="session")
def sample_spm(tmp_path_factory):
    """Path of a small BPE model (1000 + 7 pieces) trained once on the sample corpus."""
    import vocab

    prefix = str(tmp_path_factory.mktemp("spm") / "sample")
    return vocab.train_vocab(SAMPLE_CORPUS, prefix, vocab_size=1000, character_coverage=0.99)


def write_instances(path, n, seed=0):
    """n random but well-formed pretraining instances (ids below 1007, the sample vocabulary's size)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            la, lb = rng.integers(3, 12, 2)
            tokens = [5, *rng.integers(7, 1007, la).tolist(), 4, *rng.integers(7, 1007, lb).tolist(), 4]
            pos = sorted(rng.choice(np.arange(1, len(tokens) - 1), 3, replace=False).tolist())
            f.write(
                json.dumps(
                    {
                        "tokens": tokens,
                        "segment": [0] * int(la + 2) + [1] * int(lb + 1),
                        "is_next": int(rng.integers(2)),
                        "mask_pos": pos,
                        "mask_label": rng.integers(7, 1007, 3).tolist(),
                    }
                )
                + "\n"
            )
    return str(path)
