import os
import sys

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
