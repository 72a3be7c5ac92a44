"""baseline.py: TF-IDF + logistic regression learns the sample, labels reviews in predict.py's format, holds out
train.py's validation reviews, and mixes its probabilities with a fine-tuned model's at the weight asked for or
the one best on validation; bad input is a one-line error."""

import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import MICRO, ROOT, nsmc_head, run_cli

import baseline
import train
from checkpoint import save_checkpoint
from model import BertConfig, BertForSequenceClassification
from nsmc import encode_reviews, read_nsmc, valid_split
from vocab import load_vocab


@pytest.fixture(scope="module")
def work(tmp_path_factory, sample_spm):
    """3,000 training and 500 test reviews of the sample, 300 others as reviews to label, a micro classifier."""
    d = tmp_path_factory.mktemp("baseline")
    train_file = nsmc_head(d / "train.txt", 3000)
    test_file = nsmc_head(d / "test.txt", 500, "ratings_test.txt")
    others = read_nsmc(nsmc_head(d / "more.txt", 3300))[0][3000:]
    (d / "reviews.txt").write_text("\n".join(others) + "\n", encoding="utf-8")
    config = BertConfig.from_dict({**MICRO, "vocab_size": 1007, "initializer_range": 0.5})
    torch.manual_seed(0)
    save_checkpoint(
        d / "clf.pth",
        {"model": BertForSequenceClassification(config).state_dict(), "config": config.to_dict(), "n_seq": 32},
    )
    reviews, clf = str(d / "reviews.txt"), str(d / "clf.pth")
    return SimpleNamespace(dir=d, train=train_file, test=test_file, reviews=reviews, clf=clf, vocab=sample_spm)


def labelled(w, *extra):
    """baseline.py --input on the work's reviews, as a user runs it -> (P(positive) per output line, stderr)."""
    p = subprocess.run(
        [sys.executable, "baseline.py", "--train", w.train, "--test", w.test, "--input", w.reviews, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    rows = [line.split("\t", 2) for line in p.stdout.splitlines()]
    with open(w.reviews, encoding="utf-8") as f:
        assert [text for _, _, text in rows] == f.read().splitlines()  # the input's order
    return np.array([float(q) if label == "positive" else 1 - float(q) for label, q, _ in rows]), p.stderr


def test_it_learns_the_sample_and_labels_reviews_as_predict_py_does(work, tmp_path):
    p_pos, log = labelled(work, "--window", "64")
    test_acc = float(re.search(r"TF-IDF \+ logistic regression: valid acc [\d.]+, test acc ([\d.]+)", log)[1])
    assert test_acc > 0.7, log  # about 0.77 from 2,850 reviews; a constant answer scores 0.5
    assert 0.2 < (p_pos > 0.5).mean() < 0.8  # both labels given
    out = tmp_path / "teacher.tsv"
    lines = (f"{'positive' if q > 0.5 else 'negative'}\t{max(q, 1 - q):.4f}\ttext {i}\n" for i, q in enumerate(p_pos))
    out.write_text("".join(lines))
    reviews, p_read = train.read_teacher(str(out))  # what train.py --unlabeled reads
    assert len(reviews) == 300 and np.allclose(p_read, p_pos, atol=1e-4)


def test_the_mix_is_the_weighted_mean_of_both_models(work):
    """--weight 0.3: each line is 0.7 x predict.py's P(positive) + 0.3 x TF-IDF's alone (4 digits printed)."""
    tfidf, _ = labelled(work)
    mixed, log = labelled(work, "--save", work.clf, "--vocab", work.vocab, "--weight", "0.3", "--fp32")
    p = subprocess.run(
        [sys.executable, "predict.py", "--input", work.reviews, "--save", work.clf, "--vocab", work.vocab, "--fp32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    bert = np.array([float(q) if lab == "positive" else 1 - float(q) for lab, q, _ in
                     (line.split("\t", 2) for line in p.stdout.splitlines())])
    assert np.abs(bert - tfidf).max() > 0.1  # two different models
    assert np.abs(0.7 * bert + 0.3 * tfidf - mixed).max() < 2e-4, log
    assert "mixed, TF-IDF weight 0.3:" in log


def test_the_weight_picked_is_the_smallest_best_on_validation():
    labels = [1, 1, 0, 0]
    p_bert, p_tfidf = [0.9, 0.35, 0.3, 0.1], [0.6, 0.9, 0.55, 0.2]  # both right for 0.27 < w < 0.8 only
    assert baseline.pick_weight(p_bert, p_tfidf, labels) == (pytest.approx(0.3), 1.0)
    assert baseline.pick_weight(p_bert, p_bert, labels) == (0.0, 0.75)  # a tie everywhere: no TF-IDF
    assert baseline.pick_weight([0.4] * 4, [0.6, 0.6, 0.4, 0.4], labels) == (pytest.approx(0.6), 1.0)


def test_it_holds_out_train_pys_validation_reviews(work):
    sp = load_vocab(work.vocab)
    args = SimpleNamespace(train=work.train, test=work.test, valid=0.1, valid_seed=7, n_seq=32, unlabeled=None)
    _, valid, _, _ = train.load_splits(args, sp, log=lambda *a: None)
    reviews, labels = read_nsmc(work.train)
    train_idx, valid_idx = valid_split(len(reviews), 0.1, 7)
    assert len(valid_idx) == 300 and sorted([*train_idx, *valid_idx]) == list(range(3000))
    assert valid[1] == [labels[i] for i in valid_idx]
    assert all((a == b).all() for a, b in zip(valid[0], encode_reviews(sp, [reviews[i] for i in valid_idx], 32)))
    assert (valid_split(3000, 0.1, 8)[1] != valid_idx).any()  # the seed draws it


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train", "nope.txt"], "nope.txt"),
        (["--weight", "2"], "--weight must be between 0 and 1"),
        (["--ngram", "3", "2"], "--ngram needs 1 <= MIN <= MAX"),
        (["--min_df", "100000"], "lower --min_df"),
    ],
)
def test_bad_input_is_a_one_line_error(work, args, message):
    code, out = run_cli("baseline.py", "--train", work.train, "--test", work.test, *args)
    assert code != 0 and message in out and "Traceback" not in out, out
