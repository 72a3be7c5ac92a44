"""Classify reviews with a model fine-tuned by train.py.

    python predict.py "이 영화 정말 재밌어요"
    python predict.py "최악이다" "배우 연기가 좋았다" --save save_best.pth --vocab kowiki.model
    python predict.py --input reviews.txt          # one review per line

Prints one line per review: label (positive/negative), its probability, and the review.
"""

import argparse

import torch

from checkpoint import load_checkpoint
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForSequenceClassification
from nsmc import collate_reviews, encode_reviews
from vocab import load_vocab

LABELS = ("negative", "positive")


def load_classifier(path, vocab_path):
    """-> (model in eval mode, sentencepiece processor, n_seq) from a train.py checkpoint."""
    state = load_checkpoint(path, "run `python train.py` to make it")
    if "classifier.weight" not in state["model"]:
        raise UserError(
            f"{path} has no classifier: it is a pretraining checkpoint; fine-tune it with `python train.py --pretrain {path}`"
        )
    sp = load_vocab(vocab_path)
    config = BertConfig.from_dict(state["config"])
    if config.vocab_size != sp.get_piece_size():
        raise UserError(
            f"{path} was trained with a vocabulary of {config.vocab_size} pieces but {vocab_path} has {sp.get_piece_size()}; pass the --vocab it was trained with"
        )
    model = BertForSequenceClassification(config)
    model.load_state_dict(state["model"])
    return model.eval(), sp, state.get("n_seq", config.max_position_embeddings)


@torch.no_grad()
def predict(model, sp, reviews, n_seq, batch=256):
    """-> list of (label index, probability of that label) for each review."""
    out = []
    ids = encode_reviews(sp, reviews, n_seq)
    for i in range(0, len(ids), batch):
        b = collate_reviews(ids[i : i + batch], n_seq=n_seq)
        probs = model(b["input_ids"], attention_mask=b["attention_mask"]).float().softmax(-1)
        p, label = probs.max(-1)
        out += list(zip(label.tolist(), p.tolist()))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*", help="reviews to classify")
    p.add_argument("--input", default=None, help="a file with one review per line")
    p.add_argument("--save", default="save_best.pth", help="checkpoint from train.py")
    p.add_argument("--vocab", default="kowiki.model", help="the SentencePiece model it was trained with")
    args = p.parse_args(argv)
    reviews = list(args.text)
    if args.input:
        try:
            with open(require_file(args.input), encoding="utf-8") as f:
                reviews += [line.rstrip("\n") for line in f]
        except (UnicodeDecodeError, IsADirectoryError) as e:
            raise UserError(
                f"{args.input} is not a UTF-8 text file of reviews, one a line ({type(e).__name__})"
            ) from None
    if not reviews:
        raise UserError('nothing to classify: pass reviews as arguments (python predict.py "재밌어요") or --input FILE')
    model, sp, n_seq = load_classifier(args.save, args.vocab)
    for text, (label, prob) in zip(reviews, predict(model, sp, reviews, n_seq)):
        print(f"{LABELS[label]}\t{prob:.4f}\t{text}")


if __name__ == "__main__":
    main_guard(main)
