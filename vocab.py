"""Train the SentencePiece vocabulary, and the special-token ids every other script uses.

    python vocab.py --input data/kowiki --prefix kowiki --vocab_size 8000
    python vocab.py --input data/sample/kowiki-sample.txt.xz --prefix /tmp/sample --vocab_size 1000
    python vocab.py --input data/kowiki reviews.txt --prefix both    # several corpora, read one after another

writes kowiki.model and kowiki.vocab. --vocab_size counts ordinary pieces only: the 7 special
pieces come on top, so --vocab_size 8000 gives 8007 ids in all (as the reference project did).
Ids 0..6 are fixed: [PAD] [UNK] [BOS] [EOS] [SEP] [CLS] [MASK].

Other scripts: `from vocab import load_vocab, CLS_ID, SEP_ID, MASK_ID, N_SPECIAL`.
"""

import argparse
import os

import sentencepiece as spm
from tqdm import tqdm

import errors
from corpus import iter_documents, split_sentences
from errors import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID, SEP_ID, CLS_ID, MASK_ID = range(7)
N_SPECIAL = 7
SPECIAL_PIECES = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[MASK]"]


def load_vocab(path):
    """Load a SentencePiece model made by vocab.py, checking the special ids are in place."""
    # --vocab pointing at a Hugging Face directory, its tokenizer.json, or a spiece.model it lacks
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    spiece = os.path.join(folder, "spiece.model")
    if os.path.isdir(path) or not os.path.isfile(path) or os.path.basename(path) == "tokenizer.json":
        if os.path.isfile(os.path.join(folder, "tokenizer.json")) and not os.path.isfile(spiece):
            raise UserError(
                f"{folder} has tokenizer.json but no spiece.model: our scripts tokenize with SentencePiece; pass "
                "--vocab the .model file the model was trained with (export.py copies it to spiece.model)"
            )
        if os.path.isdir(path) or os.path.basename(path) == "tokenizer.json":
            raise UserError(f"{path} is not a SentencePiece model; pass --vocab {spiece}")
    if not os.path.exists(path):
        raise UserError(f"{path} not found; run `python vocab.py` first")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(path)
    except (OSError, RuntimeError):
        raise UserError(f"{path} is not a SentencePiece model; run `python vocab.py` to make one") from None
    found = [sp.id_to_piece(i) if i < sp.get_piece_size() else None for i in range(N_SPECIAL)]
    if found != SPECIAL_PIECES:
        raise UserError(f"{path} has {found} at ids 0..6, expected {SPECIAL_PIECES}; retrain it with `python vocab.py`")
    return sp


def iter_sentences(paths):
    # Sentences, not raw lines, go to SentencePiece so WikiExtractor markup never reaches it
    # and no "sentence" exceeds its max_sentence_length (long lines would be dropped).
    paths = [paths] if isinstance(paths, str) else paths
    corpora = [iter_documents(p) for p in paths]  # raises UserError now, not mid-training, if a path is missing
    return (s for documents in corpora for doc in documents for paragraph in doc for s in split_sentences(paragraph))


def train_vocab(
    input_paths,
    prefix,
    vocab_size=8000,
    model_type="bpe",
    input_sentence_size=2_000_000,
    character_coverage=0.9995,
    seed=42,
    num_threads=None,
    progress=False,
):
    """Train `prefix`.model / `prefix`.vocab with vocab_size ordinary pieces + N_SPECIAL from one corpus path or a
    list of them; return the .model path."""
    sentences = iter_sentences(input_paths)
    if progress:
        sentences = tqdm(sentences, desc="reading", unit=" sent", unit_scale=True)
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=prefix,
            model_type=model_type,
            vocab_size=vocab_size + N_SPECIAL,
            character_coverage=character_coverage,
            # SentencePiece keeps a reservoir sample of this many sentences, so memory stays
            # bounded however large the corpus is.
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=num_threads or os.cpu_count(),
            pad_id=PAD_ID,
            pad_piece="[PAD]",
            unk_id=UNK_ID,
            unk_piece="[UNK]",
            bos_id=BOS_ID,
            bos_piece="[BOS]",
            eos_id=EOS_ID,
            eos_piece="[EOS]",
            user_defined_symbols=SPECIAL_PIECES[SEP_ID:],  # [SEP] [CLS] [MASK] take ids 4, 5, 6
            minloglevel=1,  # its per-step INFO log is thousands of lines; warnings still show
        )
    except RuntimeError as e:
        # e.g. "Vocabulary size too high" on a small corpus, or no sentences at all.
        names = input_paths if isinstance(input_paths, str) else " ".join(input_paths)
        raise UserError(f"sentencepiece training on {names} failed: {e}") from None
    return prefix + ".model"


def main():
    parser = argparse.ArgumentParser(description="Train the SentencePiece vocabulary.")
    parser.add_argument(
        "--input", nargs="+", default=["data/kowiki"], help="corpus files or directories (see corpus.py)"
    )
    parser.add_argument("--prefix", default="kowiki", help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab_size", type=int, default=8000, help="ordinary pieces; 7 special pieces come on top")
    parser.add_argument("--model_type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument(
        "--input_sentence_size",
        type=int,
        default=2_000_000,
        help="sentences sampled from the corpus for training (bounds memory)",
    )
    parser.add_argument("--character_coverage", type=float, default=0.9995)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.vocab_size < 1:
        raise UserError(f"--vocab_size must be positive, got {args.vocab_size}")
    if not 0 < args.character_coverage <= 1:
        raise UserError(f"--character_coverage must be in (0, 1], got {args.character_coverage}")
    if args.input_sentence_size < 1:
        raise UserError(f"--input_sentence_size must be positive, got {args.input_sentence_size}")
    if os.path.dirname(args.prefix):
        os.makedirs(os.path.dirname(args.prefix), exist_ok=True)

    model = train_vocab(
        args.input,
        args.prefix,
        args.vocab_size,
        args.model_type,
        args.input_sentence_size,
        args.character_coverage,
        args.seed,
        progress=True,
    )
    sp = load_vocab(model)
    print(
        f"{sp.get_piece_size()} pieces ({args.vocab_size} + {N_SPECIAL} special): wrote {model} and {args.prefix}.vocab"
    )


if __name__ == "__main__":
    errors.main_guard(main)
