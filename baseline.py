"""TF-IDF + logistic regression on NSMC: the baseline a BERT has to beat, and a second teacher for self-training.

    python baseline.py                                   # fit, report validation and test accuracy
    python baseline.py --input reviews.txt > tfidf.tsv   # and label reviews, in predict.py's output format
    python baseline.py --input reviews.txt --save save_best.pth --vocab nsmc.model > teacher.tsv
        # the teacher of `train.py --unlabeled teacher.tsv`: the fine-tuned model's probabilities and this
        # model's, mixed with the weight that does best on the validation share

The features are character n-grams (1 to 4 characters, within words; sublinear term frequency, idf, seen in at
least --min_df reviews) of the training share of --train: the same --valid / --valid_seed draw as train.py, so
the validation reviews are never fitted and pick the regularization C (of --C) and the mixing weight. --test is
read only to report accuracy. The two kinds of model err on different reviews, so their mixture is a better
teacher than either (docs/electra_and_reviews.md).

--input is read as a stream, --window reviews at a time, and each window's lines are printed as it is done,
in the input's order: label (positive/negative), its probability, and the review, as predict.py prints them.
"""

import argparse
import sys
import time

import numpy as np

from errors import UserError, main_guard, require_file
from nsmc import read_nsmc, valid_split
from predict import load_models, predict_stream, print_labels, read_lines, windows
from training import get_device


def fit(texts, labels, valid_texts, valid_labels, Cs=(1.0, 3.0, 10.0), ngrams=(1, 4), min_df=2, log=print):
    """-> (vectorizer, classifier) fitted on texts, with the C of Cs that does best on the validation reviews."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UserError("baseline.py needs scikit-learn: pip install -r requirements.txt") from None
    t = time.time()
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(ngrams), min_df=min_df, sublinear_tf=True)
    try:
        x = vec.fit_transform(texts)
    except ValueError:  # sklearn: no n-gram is in min_df reviews
        raise UserError(f"no character n-gram is in {min_df} training reviews: lower --min_df") from None
    x_valid = vec.transform(valid_texts)
    log(f"{x.shape[1]:,} character n-grams of {len(texts):,} training reviews ({time.time() - t:.0f} s)")
    best = None
    for C in Cs:
        clf = LogisticRegression(C=C, max_iter=2000).fit(x, labels)
        acc = accuracy(clf.predict_proba(x_valid)[:, 1], valid_labels)
        log(f"C {C:g}: valid acc {acc:.4f}")
        if best is None or acc > best[0]:
            best = acc, clf
    return vec, best[1]


def proba(model, texts):
    """P(positive) of each text under a fitted (vectorizer, classifier)."""
    vec, clf = model
    return clf.predict_proba(vec.transform(texts))[:, 1]


def accuracy(p_pos, labels):
    return float(np.mean((np.asarray(p_pos) > 0.5) == np.asarray(labels, dtype=bool))) if len(labels) else 0.0


def mix(p_bert, p_tfidf, w):
    """P(positive) of the mixture: (1 - w) p_bert + w p_tfidf."""
    return (1 - w) * np.asarray(p_bert) + w * np.asarray(p_tfidf)


def pick_weight(p_bert, p_tfidf, labels, steps=10):
    """-> (w, accuracy): the weight of the TF-IDF model in mix(), in steps of 1/steps, that is most accurate on
    these labels (the smallest such w on a tie)."""
    accs = [(accuracy(mix(p_bert, p_tfidf, w), labels), -w) for w in np.linspace(0, 1, steps + 1)]
    acc, w = max(accs)
    return float(-w), acc


def p_positive(results):
    """predict_stream's (label, probability of that label) -> P(positive) each."""
    return np.array([p if label == 1 else 1 - p for label, p in results])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default="data/ratings_train.txt", help="NSMC training file (id, document, label)")
    p.add_argument("--test", default="data/ratings_test.txt", help="NSMC test file, read only to report accuracy")
    p.add_argument("--input", default=None, help="reviews to label, one a line (predict.py's output on stdout)")
    p.add_argument(
        "--save",
        action="append",
        default=None,
        help="train.py checkpoint(s) to mix with (several: their mean first); needs --vocab",
    )
    p.add_argument("--vocab", default="kowiki.model", help="the SentencePiece model --save was trained with")
    p.add_argument("--weight", type=float, default=None, help="weight of TF-IDF in the mix (default: best on valid)")
    p.add_argument("--valid", type=float, default=0.05, help="share of --train held out, as train.py's --valid")
    p.add_argument("--valid_seed", type=int, default=42, help="seed of that draw, as train.py's --valid_seed")
    p.add_argument("--C", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="regularization values to try")
    p.add_argument("--ngram", type=int, nargs=2, default=[1, 4], metavar=("MIN", "MAX"), help="character n-grams")
    p.add_argument("--min_df", type=int, default=2, help="keep n-grams seen in at least this many reviews")
    p.add_argument("--window", type=int, default=4096, help="--input reviews labelled and printed at a time")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index for --save; CPU when left out")
    p.add_argument("--fp32", action="store_true", help="--save in fp32 even where the hardware has bf16")
    args = p.parse_args(argv)
    if not 0 < args.valid < 1:
        raise UserError(f"--valid must be a share between 0 and 1, got {args.valid}")
    if args.weight is not None and not 0 <= args.weight <= 1:
        raise UserError(f"--weight must be between 0 and 1, got {args.weight}")
    if not 1 <= args.ngram[0] <= args.ngram[1] or args.min_df < 1 or args.window < 1 or min(args.C) <= 0:
        raise UserError("--ngram needs 1 <= MIN <= MAX; --min_df, --window and --C must be positive")
    if args.input:
        require_file(args.input)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # stdout carries the labels

    reviews, labels = read_nsmc(args.train)
    train_idx, valid_idx = valid_split(len(reviews), args.valid, args.valid_seed)
    valid = [reviews[i] for i in valid_idx], [labels[i] for i in valid_idx]
    model = fit(
        [reviews[i] for i in train_idx], [labels[i] for i in train_idx], *valid, args.C, args.ngram, args.min_df, log
    )
    test = read_nsmc(args.test)
    p_valid, p_test = proba(model, valid[0]), proba(model, test[0])
    log(f"TF-IDF + logistic regression: valid acc {accuracy(p_valid, valid[1]):.4f}, "
        f"test acc {accuracy(p_test, test[1]):.4f}")
    w = 1.0
    if args.save:
        models, sp, n_seq = load_models(args.save, args.vocab, get_device(args.gpu), args.fp32)
        bert_valid = p_positive(predict_stream(models, sp, valid[0], n_seq))
        bert_test = p_positive(predict_stream(models, sp, test[0], n_seq))
        log(f"{' + '.join(args.save)}: valid acc {accuracy(bert_valid, valid[1]):.4f}, "
            f"test acc {accuracy(bert_test, test[1]):.4f}")
        if args.weight is None:
            w, _ = pick_weight(bert_valid, p_valid, valid[1])
        else:
            w = args.weight
        log(f"mixed, TF-IDF weight {w:g}{'' if args.weight is not None else ' (best on valid)'}: valid acc "
            f"{accuracy(mix(bert_valid, p_valid, w), valid[1]):.4f}, "
            f"test acc {accuracy(mix(bert_test, p_test, w), test[1]):.4f}")
    if not args.input:
        return

    def rows():  # (label, its probability, review) of each --input line, a window at a time
        for chunk in windows(read_lines(args.input), args.window):
            p_pos = proba(model, chunk)
            if args.save and w < 1:
                p_pos = mix(p_positive(predict_stream(models, sp, chunk, n_seq)), p_pos, w)
            yield from ((int(q > 0.5), max(q, 1 - q), text) for text, q in zip(chunk, p_pos))

    t = time.time()
    n = print_labels(rows(), args.window)
    log(f"labelled {n:,} reviews of {args.input} ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main_guard(main)
