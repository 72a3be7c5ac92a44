"""Classify reviews with a model fine-tuned by train.py.

    python predict.py "이 영화 정말 재밌어요"
    python predict.py "최악이다" "배우 연기가 좋았다" --save save_best.pth --vocab kowiki.model
    python predict.py --input reviews.txt          # one review per line, any number of lines
    python predict.py --input reviews.txt --gpu 0  # on a GPU
    python predict.py --input reviews.txt --save a.pth --save b.pth --save c.pth   # an ensemble: mean probabilities

Prints one line per review, in the input's order: label (positive/negative), its probability, and the review.
--input is read as a stream, --window reviews at a time, and each window's lines are printed as soon as
they are classified, so a file of millions of lines runs in constant memory. Within a window the reviews
are sorted by length and cut into batches of about --batch_tokens padded tokens, so a batch pads little;
bf16 where the hardware does it natively (AMX / AVX512_BF16 CPUs, GPUs), fp32 elsewhere or with --fp32.
--int8 (CPU): the encoder's matrix products in int8, about 1.4x faster than fp32 where there is no native bf16
(AVX2 CPUs) and 1.3-1.5x faster than bf16 on a Zen 4 (AVX512_VNNI); 54-67 of the 50,000 NSMC test labels changed
for one model, at the same accuracy (docs/speed.md).
With several --save, each review's probabilities are the mean of theirs: an ensemble, and the teacher whose
output `train.py --unlabeled` learns from (self-training).
"""

import argparse
import codecs
import itertools
import os
import sys
import warnings

import numpy as np
import torch
from torch import nn

from checkpoint import load_checkpoint
from errors import UserError, main_guard, require_file
from model import BertConfig, BertForSequenceClassification
from nsmc import LABELS, collate_reviews, encode_reviews
from training import cpu_has_bf16, get_device, keep_freed_memory, mixed_precision, pad_multiple
from vocab import load_vocab

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # mixed_precision's names


def load_classifier(path, vocab_path):
    """-> (model in eval mode, sentencepiece processor, n_seq) from a train.py checkpoint."""
    state = load_checkpoint(path, "run `python train.py` to make it")
    if "classifier.weight" not in state["model"]:
        raise UserError(
            f"{path} has no classifier: it is a pretraining checkpoint; "
            f"fine-tune it with `python train.py --pretrain {path}`"
        )
    sp = load_vocab(vocab_path)
    config = BertConfig.from_dict(state["config"])
    if config.vocab_size != sp.get_piece_size():
        raise UserError(
            f"{path} was trained with a vocabulary of {config.vocab_size} pieces but {vocab_path} has "
            f"{sp.get_piece_size()}; pass the --vocab it was trained with"
        )
    model = BertForSequenceClassification(config)
    model.load_state_dict(state["model"])
    return model.eval(), sp, state.get("n_seq", config.max_position_embeddings)


def load_models(paths, vocab_path, device, fp32=False, int8=False):
    """-> (models, sentencepiece processor, n_seq) of train.py checkpoints, ready for predict_stream on `device`:
    bf16 where the hardware has it natively (fp32 with `fp32`), or int8 matrix products on a CPU (`int8`)."""
    loaded = [load_classifier(path, vocab_path) for path in paths]
    # an ensemble reads each review cut to the shortest n_seq among its checkpoints
    models, sp, n_seq = [m for m, _, _ in loaded], loaded[0][1], min(n for _, _, n in loaded)
    for model in models:
        if int8:  # int8 matrix products, everything else in fp32
            quantize_int8(model)
            continue
        # weights in bf16 outright rather than autocast: in inference nothing needs fp32 master weights, and
        # autocast would cast every weight at every batch (a quarter of the CPU time)
        model.to(device, DTYPES[mixed_precision(device, fp32)[2]])
    return models, sp, n_seq


def int8_engine():
    """The quantized engine that packs --int8's weights: oneDNN on a CPU without native bf16 (AVX2 CPUs, where --int8
    is the fast path: 1.06-1.16x the default engine's rate over 50,000 reviews held to AVX2), else torch's default
    ('x86', which times as fbgemm for these Linears: as fast as oneDNN with AVX512_VNNI on a Zen 4, and about
    100-145 MB smaller; docs/speed.md)."""
    if not cpu_has_bf16() and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


def quantize_int8(model):
    """The model with its encoder's Linear layers in int8 (in place): torch's dynamic quantization, int8 weights
    with one scale per output row and each batch's activations quantized as it runs, on int8_engine()'s kernels.
    The pooler and classifier, at [CLS] only, stay fp32. For the CPU in fp32; the model must be in eval mode (the
    encoder runs its plain path). The engine that packs a Linear's weights runs it, whatever
    torch.backends.quantized.engine says later, so the engine is set for the packing only."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise UserError(
            f"--int8 needs torch.ao.quantization, which torch {torch.__version__} lacks; leave --int8 out"
        ) from None
    engine, torch.backends.quantized.engine = torch.backends.quantized.engine, int8_engine()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao; it is still here
            quantize_dynamic(model.bert.encoder, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    finally:
        torch.backends.quantized.engine = engine
    return model


def windows(items, size):
    """Lists of up to `size` consecutive items of any iterable, read as they are needed."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def token_batches(lengths, batch_tokens, multiple=16):
    """Index arrays of batches of about batch_tokens padded tokens: longest reviews first, each batch of similar
    lengths (the padded length is collate_reviews', a multiple of `multiple`). At least one review per batch."""
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        T = -(-int(lengths[order[i]]) // multiple) * multiple
        n = max(1, batch_tokens // T)
        yield order[i : i + n]
        i += n


@torch.inference_mode()
def predict_stream(model, sp, reviews, n_seq, batch_tokens=2048, window=4096):
    """Yield (label index, probability of that label) for each review of the iterable `reviews`, in its order,
    computed in the model's own dtype on its device; `model` may be a list of models: their mean probabilities.

    Reads `window` reviews at a time and yields their results before reading more, so memory does not grow
    with the input; sorting within the window lets each batch pad to about its own reviews' length."""
    models = model if isinstance(model, (list, tuple)) else [model]
    param = next(models[0].parameters())
    device = param.device
    multiple = pad_multiple(device, "fp32" if param.dtype == torch.float32 else "bf16")  # 1: fp32 (or int8) on a CPU
    for chunk in windows(reviews, window):
        ids = encode_reviews(sp, chunk, n_seq)
        labels, probs = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids))
        for idx in token_batches(np.array([len(x) for x in ids]), batch_tokens, multiple):
            b = collate_reviews([ids[i] for i in idx], n_seq=n_seq, multiple=multiple)
            x, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
            probs_sum = sum(m(x, attention_mask=mask, cls_only=True).float().softmax(-1) for m in models)
            p, label = (probs_sum / len(models)).max(-1)
            labels[idx], probs[idx] = label.cpu().numpy(), p.cpu().numpy()
        yield from zip(labels.tolist(), probs.tolist())


def predict(model, sp, reviews, n_seq, **kw):
    """-> list of (label index, probability of that label) for each review."""
    return list(predict_stream(model, sp, reviews, n_seq, **kw))


def print_labels(rows, flush_every):
    """Write (label index, its probability, review) rows to stdout as `label<TAB>probability<TAB>review` lines,
    flushed every `flush_every` lines so a reader of a pipe sees results as they come -> the number written.
    A reader that stops reading (`| head`) ends it quietly, as cat does."""
    n = 0
    try:
        for n, (label, prob, text) in enumerate(rows, 1):
            sys.stdout.write(f"{LABELS[label]}\t{prob:.4f}\t{text}\n")
            if n % flush_every == 0:
                sys.stdout.flush()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return n


def read_lines(path):
    """The lines of a file without their newlines, one at a time."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                yield line.rstrip(b"\n").rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path} is not a UTF-8 text file of reviews, one a line (line {n} is not)") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*", help="reviews to classify")
    p.add_argument("--input", default=None, help="a file with one review per line")
    p.add_argument(
        "--save",
        action="append",
        default=None,
        help="checkpoint from train.py (default save_best.pth); several --save: an ensemble (mean probabilities)",
    )
    p.add_argument("--vocab", default="kowiki.model", help="the SentencePiece model it was trained with")
    p.add_argument(
        "--batch_tokens",
        type=int,
        default=None,
        help="padded tokens per batch (default: 2048 on a CPU, 32768 on a GPU)",
    )
    p.add_argument("--window", type=int, default=4096, help="reviews read, sorted by length and printed at a time")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index; CPU when left out")
    p.add_argument("--fp32", action="store_true", help="fp32 even where the hardware has bf16")
    p.add_argument(
        "--int8",
        action="store_true",
        help="CPU: the encoder's matrix products in int8 (faster than fp32 on AVX2 CPUs and than bf16 on AVX512_VNNI "
        "ones such as a Zen 4; a label changes now and then)",
    )
    args = p.parse_args(argv)
    if args.int8 and args.gpu is not None:
        raise UserError("--int8 is for the CPU (oneDNN's or fbgemm's int8 kernels); on a GPU leave it out (bf16 there)")
    if (args.batch_tokens is not None and args.batch_tokens < 1) or args.window < 1:
        raise UserError("--batch_tokens and --window must be at least 1")
    if args.input:
        require_file(args.input)
        if os.path.isdir(args.input):
            raise UserError(f"{args.input} is a directory, not a text file of reviews, one a line")
        with open(args.input, "rb") as f:  # a file of another encoding fails here, before the model loads
            try:
                codecs.getincrementaldecoder("utf-8")().decode(f.read(1 << 16), final=False)
            except UnicodeDecodeError:
                raise UserError(f"{args.input} is not a UTF-8 text file of reviews, one a line") from None
    if not args.text and (not args.input or os.path.getsize(args.input) == 0):
        raise UserError('nothing to classify: pass reviews as arguments (python predict.py "재밌어요") or --input FILE')
    device = get_device(args.gpu)
    if device.type == "cpu":
        # every batch frees and reallocates tensors of the same few sizes (the FFN's 2048 x 1024 is 8 MB in fp32):
        # glibc keeps their pages instead of mapping them afresh: --int8 1.03-1.29x faster on 50,000 reviews (a Zen 4,
        # AVX2 and VNNI); fp32 and bf16 within the noise (docs/speed.md)
        keep_freed_memory()
    models, sp, n_seq = load_models(args.save or ["save_best.pth"], args.vocab, device, args.fp32, args.int8)
    # small batches win on a CPU (they stay in cache); a GPU wants many tokens at once
    batch_tokens = args.batch_tokens or (2048 if device.type == "cpu" else 32768)
    # the texts twice, lazily: one stream feeds the model, the other the printing; tee holds only the window between
    reviews, texts = itertools.tee(itertools.chain(args.text, read_lines(args.input) if args.input else ()))
    results = predict_stream(models, sp, reviews, n_seq, batch_tokens, args.window)
    print_labels(((label, prob, text) for text, (label, prob) in zip(texts, results)), args.window)


if __name__ == "__main__":
    main_guard(main)
