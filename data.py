"""Make BERT pretraining instances (masked LM + next sentence prediction) as JSON lines.

    python data.py            # data/kowiki -> data/kowiki_bert.json with kowiki.model
    python data.py --input data/sample/kowiki-sample.txt.xz --output data/sample_bert.json --n_seq 128

Each output line is one instance, masking already applied, no padding:
    {"tokens": [5, ..., 4, ..., 4], "segment": [0, ..., 0, 1, ..., 1], "is_next": 1,
     "mask_pos": [3, 17, ...], "mask_label": [812, ...]}
tokens are the ids of [CLS] A [SEP] B [SEP] (length <= n_seq); segment is 0 over [CLS] A [SEP]
and 1 over B [SEP]; is_next is 1 when B truly follows A, 0 when B is from another document;
mask_pos is ascending and mask_label holds the original ids at those positions. Lines are
written without spaces. Progress and the closing MB/s count the UTF-8 text of the paragraphs
kept from the input (WikiExtractor markup, titles and headings excluded).

The recipe is google-research/bert's create_pretraining_data.py, with these differences:
  - Streaming: documents are read in chunks of --chunk_docs and each chunk is processed on its
    own, so memory stays bounded whatever the corpus size. The random "not next" B therefore
    comes from another document of the same chunk (the original holds every document in
    memory and draws from all of them), and instances are shuffled within a chunk only.
  - Each chunk has its own random generator seeded by (seed, chunk index), so the output is
    byte-identical for any --workers (it does depend on --chunk_docs).
  - The shorter target length (--short_seq_prob) is drawn again for every instance (the
    original draws it once per document).
  - A lone sentence (no sentence boundary to split at) that draws "true next" gets the next
    sentence as B, or for a document's last sentence its own second half (cut at a word start).
    The original always makes it "not next", which pulls is_next to 45% on kowiki.
  - Whole-word masking decides [MASK] / random / unchanged once per word, not per piece.
"""

import argparse
import collections
import itertools
import json
import multiprocessing
import os
import random
import time
from dataclasses import dataclass

from tqdm import tqdm

import errors
from corpus import iter_documents, split_sentences
from errors import UserError
from vocab import CLS_ID, MASK_ID, N_SPECIAL, SEP_ID, SPECIAL_PIECES, load_vocab

# Literal "[SEP]", "[CLS]", "[MASK]" in the text would be encoded as the special ids themselves
# (they are user-defined pieces) and corrupt the instance layout, so they are removed first.
TEXT_SPECIALS = SPECIAL_PIECES[SEP_ID:]


@dataclass
class TrainingInstance:
    tokens: list
    segment: list
    is_next: int
    mask_pos: list
    mask_label: list

    def to_json(self):
        return json.dumps(
            {
                "tokens": self.tokens,
                "segment": self.segment,
                "is_next": self.is_next,
                "mask_pos": self.mask_pos,
                "mask_label": self.mask_label,
            },
            separators=(",", ":"),
        )


def word_starts(sp):
    """is_word_start[id]: the piece begins a word (starts with '▁'); other pieces continue one."""
    return [sp.id_to_piece(i).startswith("▁") for i in range(sp.get_piece_size())]


def tokenize_document(paragraphs, sp):
    """A document as a list of sentences, each a non-empty list of piece ids."""
    sentences = []
    for paragraph in paragraphs:
        if "[" in paragraph:
            for special in TEXT_SPECIALS:
                paragraph = paragraph.replace(special, "")
        sentences.extend(split_sentences(paragraph))
    return [ids for ids in sp.encode(sentences) if ids]


def create_training_instances(
    all_documents, n_seq, dupe_factor, short_seq_prob, mask_prob, max_pred, vocab_size, is_word_start, rng
):
    """Instances from tokenized documents (lists of sentences of ids), dupe_factor masked copies, shuffled."""
    all_documents = [doc for doc in all_documents if doc]
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(
                create_instances_from_document(
                    all_documents,
                    document_index,
                    n_seq,
                    short_seq_prob,
                    mask_prob,
                    max_pred,
                    vocab_size,
                    is_word_start,
                    rng,
                )
            )
    rng.shuffle(instances)
    return instances


def create_instances_from_document(
    all_documents, document_index, n_seq, short_seq_prob, mask_prob, max_pred, vocab_size, is_word_start, rng
):
    document = all_documents[document_index]
    max_num_tokens = n_seq - 3  # room for [CLS], [SEP], [SEP]

    def draw_target():
        # Mostly fill the whole sequence (wasting no compute on padding), but sometimes go short
        # so the model also sees the short sequences it will meet when fine-tuned.
        return rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens

    target_seq_length = draw_target()
    instances = []
    current_chunk = []  # consecutive sentences collected until they reach the target length
    current_length = 0
    i = 0
    while i < len(document):
        current_chunk.append(document[i])
        current_length += len(document[i])
        if i == len(document) - 1 or current_length >= target_seq_length:
            want_next = rng.random() < 0.5
            if want_next and len(current_chunk) == 1:
                # A lone sentence (long, the tail of a document, or a one-sentence stub) has no
                # sentence boundary to split at. The original then always makes B "not next",
                # which pulled is_next down to 45% on kowiki; here B is the true continuation:
                # the next sentence if there is one, else the sentence's own second half.
                if i + 1 < len(document):
                    i += 1
                    current_chunk.append(document[i])
                elif len(current_chunk[0]) >= 2:
                    current_chunk = split_sentence(current_chunk[0], is_word_start, rng)
            is_next = int(want_next and len(current_chunk) >= 2)
            # A gets the sentences before a random boundary; B (if true next) the rest.
            a_end = rng.randint(1, len(current_chunk) - 1) if len(current_chunk) >= 2 else 1
            tokens_a = [t for sentence in current_chunk[:a_end] for t in sentence]
            if is_next:
                tokens_b = [t for sentence in current_chunk[a_end:] for t in sentence]
            else:
                tokens_b = random_span(all_documents, document_index, target_seq_length - len(tokens_a), rng)
                # Put the sentences B did not use back, so they can start the next instance.
                i -= len(current_chunk) - a_end
            truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            tokens = [CLS_ID] + tokens_a + [SEP_ID] + tokens_b + [SEP_ID]
            segment = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            tokens, mask_pos, mask_label = create_masked_lm_predictions(
                tokens, mask_prob, max_pred, vocab_size, rng, is_word_start
            )
            instances.append(TrainingInstance(tokens, segment, is_next, mask_pos, mask_label))
            current_chunk, current_length = [], 0
            target_seq_length = draw_target()
        i += 1
    return instances


def split_sentence(sentence, is_word_start, rng):
    """Cut a sentence of 2+ ids in two at a random word start (any piece if it is one word)."""
    cuts = [k for k in range(1, len(sentence)) if is_word_start[sentence[k]]] or range(1, len(sentence))
    k = rng.choice(cuts)
    return [sentence[:k], sentence[k:]]


def random_span(all_documents, document_index, target_length, rng):
    """Consecutive sentences from a random point of another document, about target_length ids."""
    if len(all_documents) > 1:
        other = rng.randrange(len(all_documents) - 1)
        other += other >= document_index  # any document but this one, uniformly
    else:
        other = document_index  # a one-document chunk has nothing else to draw from
    document = all_documents[other]
    tokens = []
    for sentence in document[rng.randrange(len(document)) :]:
        tokens.extend(sentence)
        if len(tokens) >= target_length:
            break
    return tokens


def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    """Trim the longer of A and B in place, one token at a time, from the front or the back at random."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        # Random ends, so the model does not learn that sequences always end (or start) cleanly.
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def create_masked_lm_predictions(tokens, mask_prob, max_pred, vocab_size, rng, is_word_start):
    """Whole-word masking: returns (masked tokens, ascending positions, original ids there)."""
    words = []  # each a list of positions: a '▁' piece and the continuation pieces after it
    after_special = True
    for i, t in enumerate(tokens):
        if t == CLS_ID or t == SEP_ID:
            after_special = True
            continue
        # A continuation piece right after [CLS]/[SEP] (a word cut by truncation) starts its own word.
        if is_word_start[t] or after_special:
            words.append([i])
        else:
            words[-1].append(i)
        after_special = False

    n_pred = min(max_pred, max(1, round(len(tokens) * mask_prob)))
    output = list(tokens)
    mask_pos = []
    for k in range(len(words)):
        if len(mask_pos) >= n_pred:
            break
        # Visit words in random order: a Fisher-Yates shuffle done lazily, since usually only
        # the first fifth of the words is needed (rng.shuffle of all of them was the hot spot).
        j = rng.randrange(k, len(words))
        words[k], words[j] = words[j], words[k]
        word = words[k]
        # Never mask part of a word (a shorter one may still fit). The first word may overshoot
        # n_pred up to max_pred, so a short instance of long words still gets a masked-LM target.
        if len(mask_pos) + len(word) > (n_pred if mask_pos else max_pred):
            continue
        r = rng.random()
        for i in word:
            if r < 0.8:
                output[i] = MASK_ID
            elif r < 0.9:
                output[i] = rng.randrange(N_SPECIAL, vocab_size)
            # else: left as is, so the model cannot assume a visible token is never a target
        mask_pos.extend(word)
    mask_pos.sort()
    return output, mask_pos, [tokens[i] for i in mask_pos]


# Worker state: the SentencePiece model is loaded once per process, not once per chunk.
worker = {}


def init_worker(vocab_path, settings):
    sp = load_vocab(vocab_path)
    worker.update(settings, sp=sp, is_word_start=word_starts(sp))


def process_chunk(job):
    """(chunk index, documents) -> (documents, input bytes, instances, JSON lines text)."""
    chunk_index, documents = job
    rng = random.Random(f"{worker['seed']}:{chunk_index}")  # str seeds hash stably across runs
    all_documents = [tokenize_document(doc, worker["sp"]) for doc in documents]
    is_word_start = worker["is_word_start"]
    instances = create_training_instances(
        all_documents,
        worker["n_seq"],
        worker["dupe_factor"],
        worker["short_seq_prob"],
        worker["mask_prob"],
        worker["max_pred"],
        len(is_word_start),
        is_word_start,
        rng,
    )
    n_bytes = sum(len(p.encode("utf-8")) + 1 for doc in documents for p in doc)
    return len(documents), n_bytes, len(instances), "".join(inst.to_json() + "\n" for inst in instances)


def chunked(iterable, size):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def imap_bounded(pool, func, jobs, max_pending):
    """Ordered pool.imap that reads at most max_pending jobs ahead of the results consumed.

    Pool.imap has no such bound: its feeder thread reads ahead of the workers and finished
    results pile up if writing lags. This keeps a few chunks in memory whatever the corpus size.
    """
    pending = collections.deque()
    for job in jobs:
        pending.append(pool.apply_async(func, (job,)))
        if len(pending) >= max_pending:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def main():
    parser = argparse.ArgumentParser(description="Make BERT pretraining instances as JSON lines.")
    parser.add_argument("--input", default="data/kowiki", help="corpus file or directory (see corpus.py)")
    parser.add_argument("--vocab", default="kowiki.model", help="SentencePiece model from vocab.py")
    parser.add_argument("--output", default="data/kowiki_bert.json")
    parser.add_argument("--n_seq", type=int, default=256, help="max tokens per instance, [CLS] and [SEP]s included")
    parser.add_argument("--mask_prob", type=float, default=0.15)
    parser.add_argument(
        "--max_pred", type=int, default=None, help="max masked tokens per instance (default: round(n_seq * mask_prob))"
    )
    parser.add_argument("--dupe_factor", type=int, default=1, help="differently masked copies of the data")
    parser.add_argument("--short_seq_prob", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument(
        "--chunk_docs",
        type=int,
        default=2000,
        help="documents per chunk (the unit of parallel work; changes the output)",
    )
    args = parser.parse_args()
    if args.max_pred is None:
        args.max_pred = max(1, round(args.n_seq * args.mask_prob))
    if args.n_seq < 8:
        raise UserError(f"--n_seq must be at least 8, got {args.n_seq}")
    if not 0 < args.mask_prob < 1:
        raise UserError(f"--mask_prob must be in (0, 1), got {args.mask_prob}")
    if not 0 <= args.short_seq_prob <= 1:
        raise UserError(f"--short_seq_prob must be in [0, 1], got {args.short_seq_prob}")
    for flag in ("max_pred", "dupe_factor", "workers", "chunk_docs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    load_vocab(args.vocab)  # fail now, in one line, rather than inside every worker
    documents = iter_documents(args.input)

    settings = {
        k: getattr(args, k) for k in ("seed", "n_seq", "dupe_factor", "short_seq_prob", "mask_prob", "max_pred")
    }
    jobs = enumerate(chunked(documents, args.chunk_docs))
    if os.path.dirname(args.output):
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
    # a crash leaves no half-written file under the real name; two runs, two files
    tmp = f"{args.output}.tmp{os.getpid()}"
    t0 = time.time()
    n_docs = n_bytes = n_instances = 0
    pool = None
    try:
        if args.workers == 1:
            init_worker(args.vocab, settings)
            results = map(process_chunk, jobs)
        else:
            pool = multiprocessing.Pool(args.workers, initializer=init_worker, initargs=(args.vocab, settings))
            results = imap_bounded(pool, process_chunk, jobs, max_pending=2 * args.workers)
        with open(tmp, "w", encoding="utf-8") as out, tqdm(desc="input text", unit="B", unit_scale=True) as bar:
            for docs, nb, ni, text in results:
                out.write(text)
                n_docs, n_bytes, n_instances = n_docs + docs, n_bytes + nb, n_instances + ni
                bar.update(nb)
                bar.set_postfix(docs=n_docs, instances=n_instances)
        if n_instances == 0:
            raise UserError(f"no documents found in {args.input}")
        os.replace(tmp, args.output)
    finally:
        if pool is not None:
            pool.terminate()
        if os.path.exists(tmp):
            os.remove(tmp)
    secs = time.time() - t0
    mb = n_bytes / 1e6
    print(
        f"wrote {n_instances} instances from {n_docs} documents to {args.output}: "
        f"{mb:.1f} MB of input text in {secs:.1f} s ({mb / secs:.2f} MB/s)"
    )


if __name__ == "__main__":
    errors.main_guard(main)
