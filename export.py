"""Export a checkpoint as a Hugging Face BERT directory that AutoTokenizer, AutoModel and pipeline() load as they are.

    python export.py --pretrain save_pretrain.pth --output hf_export   # -> BertForPreTraining (fill-mask)
    python export.py --pretrain save_best.pth --output hf_nsmc         # -> BertForSequenceClassification
    python export.py --pretrain save_best.pth --vocab kowiki.model --output hf_nsmc --bin   # pytorch_model.bin
    python export.py --pretrain electra.pth --output hf_electra         # --objective electra: the encoder -> BertModel

writes config.json, model.safetensors (or pytorch_model.bin with --bin), a fast tokenizer built from the
SentencePiece model (tokenizer.json, tokenizer_config.json, special_tokens_map.json), spiece.model (the
SentencePiece model, copied) and README.md (a model card). Then, with transformers installed:

    pipeline("text-classification", model="hf_nsmc")(["이 영화 정말 재밌어요"], truncation=True)

The way back is `python train.py --pretrain hf_export --config hf_export/config.json --vocab hf_export/spiece.model`.
Writing needs the `tokenizers` and `safetensors` packages (transformers brings both), not transformers itself.
"""

import argparse
import json
import os
import re
import shutil
import struct

from checkpoint import encoder_weights, load_checkpoint, save_checkpoint
from errors import UserError, main_guard
from model import BertConfig
from predict import LABELS
from vocab import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_PIECES, UNK_ID, load_vocab

# SentencePiece's piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(1, 7)
TOKEN_NAMES = {
    "pad_token": PAD_ID,
    "unk_token": UNK_ID,
    "cls_token": CLS_ID,
    "sep_token": SEP_ID,
    "mask_token": MASK_ID,
}


def proto_fields(buf):
    """(field number, value) of one serialized protobuf message: an int for varints, bytes otherwise.
    SentencePiece's Python package reads its model through protobuf, which we do not depend on."""
    i = 0

    def varint():
        nonlocal i
        v = shift = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 127) << shift
            shift += 7
            if b < 128:
                return v

    while i < len(buf):
        key = varint()
        wire = key & 7
        if wire == 0:
            v = varint()
        elif wire == 2:
            n = varint()
            v, i = bytes(buf[i : i + n]), i + n
        elif wire in (1, 5):  # fixed 64 / 32 bits
            n = 8 if wire == 1 else 4
            v, i = bytes(buf[i : i + n]), i + n
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield key >> 3, v


def read_spm_model(path):
    """What the fast tokenizer needs from a SentencePiece .model (ModelProto): pieces, algorithm, normalizer spec.
    Field numbers and defaults are those of sentencepiece_model.proto."""
    with open(path, "rb") as f:
        buf = f.read()
    m = {"pieces": [], "model_type": 1, "byte_fallback": False, "whitespace_suffix": False}
    m |= {"norm_name": "", "charsmap": b"", "dummy_prefix": True, "remove_spaces": True, "escape_spaces": True}
    for field, v in proto_fields(buf):
        if field == 1:  # SentencePiece {piece = 1, score = 2, type = 3}
            piece = dict(proto_fields(v))
            score = struct.unpack("<f", piece[2])[0] if 2 in piece else 0.0
            m["pieces"].append((piece.get(1, b"").decode("utf-8"), score, piece.get(3, NORMAL)))
        elif field == 2:  # TrainerSpec
            spec = dict(proto_fields(v))
            m["model_type"] = spec.get(3, 1)  # 1 unigram, 2 BPE, 3 word, 4 char
            m["whitespace_suffix"] = bool(spec.get(24, 0))
            m["byte_fallback"] = bool(spec.get(35, 0))
        elif field == 3:  # NormalizerSpec
            spec = dict(proto_fields(v))
            m["norm_name"] = spec.get(1, b"").decode("utf-8")
            m["charsmap"] = spec.get(2, b"")
            m["dummy_prefix"], m["remove_spaces"], m["escape_spaces"] = (bool(spec.get(k, 1)) for k in (3, 4, 5))
    return m


def fast_tokenizer(m):
    """A tokenizers.Tokenizer that encodes as SentencePieceProcessor.encode does, from read_spm_model's dict.

    transformers' convert_slow_tokenizer.py (SpmConverter.build_tokenizer_from_spm_proto) is the model for
    this; where it and sentencepiece disagree, this follows sentencepiece (tests/test_hf.py checks it)."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import BPE, Unigram
    except ImportError:
        raise UserError(
            "export.py needs the tokenizers package to write tokenizer.json: pip install tokenizers"
        ) from None
    if m["model_type"] not in (1, 2) or m["whitespace_suffix"] or not m["escape_spaces"]:
        raise UserError(
            "only unigram and BPE SentencePiece models with the default whitespace handling convert "
            "(vocab.py makes them)"
        )
    pieces = m["pieces"]
    unk_id = next(i for i, (_, _, t) in enumerate(pieces) if t == UNKNOWN)
    if m["model_type"] == 2:
        # sentencepiece merges any two adjacent symbols whose concatenation is a piece, highest score first;
        # as BPE merges: every split of every piece into two pieces, ranked by the whole piece's score
        normal = {p: (-s, i) for i, (p, s, t) in enumerate(pieces) if t == NORMAL}
        pairs = sorted((normal[p], p[:k], p[k:]) for p in normal for k in range(1, len(p)))
        merges = [(a, b) for _, a, b in pairs if a in normal and b in normal]
        # ignore_merges: a chunk that is one piece is that piece; the user-defined [CLS] [SEP] [MASK] need it
        model = BPE(
            {p: i for i, (p, _, _) in enumerate(pieces)},
            merges,
            unk_token=pieces[unk_id][0],
            fuse_unk=True,  # sentencepiece gives one [UNK] for a run of unknown characters
            byte_fallback=m["byte_fallback"],
            ignore_merges=True,
        )
    else:
        model = Unigram([(p, s) for p, s, _ in pieces], unk_id=unk_id, byte_fallback=m["byte_fallback"])
    tok = Tokenizer(model)

    # sentencepiece's normalizer: the charsmap (longest match over the raw text), then extra whitespace
    # removed, " " -> "▁", a "▁" in front. tokenizers' Precompiled applies the charsmap per grapheme, so it
    # misses the rules that span graphemes: compatibility jamo typed one by one, which sentencepiece joins into
    # a syllable (ㅈㅓ -> 저, ㅋㅕㄵ -> 켡). It leaves them as conjoining jamo, and NFC joins those. NFC would
    # also join a final consonant to a syllable typed whole (니ㄵ -> 닍), which no rule of sentencepiece does:
    # a \ufdd1 (a noncharacter) between the two keeps them apart until NFC is done.
    steps = []
    if m["charsmap"]:
        steps.append(normalizers.Precompiled(m["charsmap"]))
    if m["charsmap"] and m["norm_name"].startswith(("nmt_nfkc", "nfkc")):
        finals = map(chr, range(0x11A8, 0x11C3))  # the final consonants NFC joins to a syllable
        steps += [normalizers.Replace(Regex("(?<=[\uac00-\ud7a3])" + t), "\ufdd1" + t) for t in finals]
        steps += [normalizers.NFC(), normalizers.Replace("\ufdd1", "")]
    if m["remove_spaces"]:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", "▁"))
    if m["dummy_prefix"]:
        steps.append(normalizers.Prepend("▁"))  # not Metaspace: that skips the prefix when the text starts with ▁
    if m["remove_spaces"]:
        steps.append(normalizers.Replace(Regex(r"▁+\z"), ""))  # sentencepiece drops a typed trailing ▁ too
    tok.normalizer = normalizers.Sequence(steps)

    # User-defined pieces ([SEP] [CLS] [MASK]) are whole pieces wherever they occur in the normalized text,
    # as sentencepiece matches them; control pieces ([PAD] [BOS] [EOS], and [UNK]) typed in a review are
    # ordinary text to it. Splitting after their first character (a script boundary no piece crosses)
    # keeps the Unigram lattice and BPE's ignore_merges from finding them.
    user = sorted((p for p, _, t in pieces if t == USER_DEFINED), key=len, reverse=True)
    control = [p for p, _, t in pieces if t in (CONTROL, UNKNOWN) and len(p) > 1]
    splits = []
    if user:
        splits.append(pre_tokenizers.Split(Regex("|".join(map(re.escape, user))), "isolated"))
    if control:
        pattern = "|".join(f"{re.escape(p[0])}(?={re.escape(p[1:])})" for p in control)
        splits.append(pre_tokenizers.Split(Regex(pattern), "merged_with_previous"))
    if splits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " ")]
        + [decoders.ByteFallback()] * m["byte_fallback"]
        + [decoders.Fuse(), decoders.Strip(" ", 1, 0)] * m["dummy_prefix"]
    )
    # train.py's inputs: [CLS] A [SEP] with token type 0, and for pairs B [SEP] with token type 1 (data.py)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    # Special, so decode(skip_special_tokens=True) drops them; never matched in the raw text (transformers:
    # split_special_tokens), which would cut it into chunks that each get their own ▁ prefix.
    specials = [p for p, _, t in pieces if t in (UNKNOWN, CONTROL, USER_DEFINED)]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    tok.encode_special_tokens = True  # for this object; tokenizer.json does not keep it, tokenizer_config.json does
    return tok


def write_tokenizer(vocab_path, out, model_max_length):
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json in `out`, for transformers' AutoTokenizer."""
    fast_tokenizer(read_spm_model(vocab_path)).save(os.path.join(out, "tokenizer.json"))
    special = {name: SPECIAL_PIECES[i] for name, i in TOKEN_NAMES.items()}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "split_special_tokens": True,  # see fast_tokenizer: "[CLS]" typed in a review is what sentencepiece makes of it
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    for name, d in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2, ensure_ascii=False)


def hf_config(config, classifier, arch=None):
    """Hugging Face's config.json: our fields have its names already; add what it needs to pick the class."""
    arch = arch or ("BertForSequenceClassification" if classifier else "BertForPreTraining")
    d = {
        "architectures": [arch],
        "model_type": "bert",
        **config.to_dict(),
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
    if classifier:
        d["id2label"] = dict(enumerate(LABELS))
        d["label2id"] = {name: i for i, name in enumerate(LABELS)}
    return d


def export(state, out, safetensors=True):
    """Write config.json and the weights of checkpoint `state` (model.safetensors, or pytorch_model.bin) into `out`;
    -> the config dict."""
    config = BertConfig.from_dict(state["config"])
    classifier = "classifier.weight" in state["model"]
    # pretrain.py --objective electra: the discriminator's encoder is the model; its heads and the generator
    # have no place in a BERT class, so it goes out as a BertModel (what a fine-tuning script starts from)
    electra = "discriminator_predictions.dense.weight" in state["model"]
    weights = encoder_weights(state) if electra else dict(state["model"])
    name, other = ("model.safetensors", "pytorch_model.bin")[:: 1 if safetensors else -1]
    if os.path.exists(os.path.join(out, other)):
        # transformers (and load_checkpoint) read model.safetensors first: two weight files would disagree
        raise UserError(f"{out} already holds a {other} (an earlier export?); delete it or pass another --output")
    os.makedirs(out, exist_ok=True)
    d = hf_config(config, classifier, "BertModel" if electra else None)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2)
    if safetensors:
        write_safetensors(os.path.join(out, name), weights)
    else:
        # The state dict as it is: the tied decoder weight and bias share storage with the word embedding
        # and cls.predictions.bias, so torch.save writes each matrix once.
        save_checkpoint(os.path.join(out, name), weights)
    return d


def write_safetensors(path, weights):
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError(
            "model.safetensors needs the safetensors package: pip install safetensors (or pass --bin)"
        ) from None
    # safetensors holds no shared tensors. The MLM decoder's are tied (weight = the word embedding, bias =
    # cls.predictions.bias), so they are left out, as save_pretrained does; transformers and load_checkpoint tie
    # them back.
    tied = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    save_file(
        {k: v.contiguous() for k, v in weights.items() if k not in tied}, path + ".tmp", metadata={"format": "pt"}
    )
    os.replace(path + ".tmp", path)


CARD = """---
language: ko
license: {license}
library_name: transformers
pipeline_tag: {tag}
tags:
- bert
datasets:
{datasets}{metrics}
---

# {name}

A BERT exported by export.py from `{source}`: {arch}, num_hidden_layers={layers}, hidden_size={hidden},
num_attention_heads={heads}, vocab_size={vocab}. {about}

Files: `config.json`, `{weights}`, `tokenizer.json` with `tokenizer_config.json` and `special_tokens_map.json`
(a fast tokenizer that gives the ids SentencePiece gives), `spiece.model` (the SentencePiece model itself).

## With `pipeline`

```python
from transformers import pipeline
{pipe}
```

{pipe_note}

## With SentencePiece, as the training scripts tokenize

SentencePiece ids, `[CLS]={cls}` first, `[SEP]={sep}` after each segment, segment (token type) ids 0 over
`[CLS] A [SEP]` and 1 over `B [SEP]`, padding with `[PAD]={pad}` and an attention mask of 1 on real tokens.
{n_seq_note}

```python
import sentencepiece as spm
import torch
from transformers import {arch}

sp = spm.SentencePieceProcessor(model_file="{name}/spiece.model")
model = {arch}.from_pretrained("{name}").eval()
CLS, SEP, PAD = {cls}, {sep}, {pad}
{example}
```
"""

# the model-index entry the Hub shows as the model's evaluation result
METRICS = """
metrics:
- accuracy
model-index:
- name: {name}
  results:
  - task:
      type: text-classification
      name: Sentiment classification
    dataset:
      name: NSMC
      type: e9t/nsmc
      split: test
    metrics:
    - type: accuracy
      value: {acc:.4f}
      name: Test accuracy (train.py --test, best-on-validation epoch)"""

PIPE_CLASSIFIER = """classify = pipeline("text-classification", model="{name}")
print(classify(["이 영화 정말 재밌어요", "배우 연기가 최악이다"], truncation=True))"""

PIPE_ENCODER = """embed = pipeline("feature-extraction", model="{name}")
print(len(embed("이 영화 정말 재밌어요")[0]))  # one vector per token"""

PIPE_PRETRAIN = """fill = pipeline("fill-mask", model="{name}")
print(fill("지미 카터는 미국의 [MASK]이다."))"""

EXAMPLE_CLASSIFIER = """reviews = ["이 영화 정말 재밌어요", "배우 연기가 최악이다"]
ids = [[CLS] + sp.encode(r)[: {n_seq} - 2] + [SEP] for r in reviews]  # one segment: token types all 0
T = max(len(x) for x in ids)
input_ids = torch.tensor([x + [PAD] * (T - len(x)) for x in ids])
with torch.no_grad():
    logits = model(input_ids=input_ids, attention_mask=(input_ids != PAD).long(),
                   token_type_ids=torch.zeros_like(input_ids)).logits
print([model.config.id2label[i] for i in logits.argmax(-1).tolist()])"""

EXAMPLE_PRETRAIN = """a, b = sp.encode("지미 카터는 미국의 대통령이다."), sp.encode("그는 민주당 출신이다.")
ids = [CLS] + a + [SEP] + b + [SEP]
types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
with torch.no_grad():
    out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
# NSP index 0 = B follows A, 1 = B is random (Hugging Face's next_sentence_label; pretrain.py trains it so)
print(out.prediction_logits.shape, out.seq_relationship_logits.softmax(-1)[0, 0])"""


EXAMPLE_ENCODER = """ids = [CLS] + sp.encode("이 영화 정말 재밌어요") + [SEP]
with torch.no_grad():
    out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
print(out.last_hidden_state.shape)  # the ELECTRA discriminator's encoder: fine-tune it (train.py --pretrain)"""


def model_card(state, d, name, source, weights, license, datasets, n_seq):
    """README.md: the Hub's YAML header, a pipeline example, and tokenizing by hand with SentencePiece."""
    arch = d["architectures"][0]
    classifier = arch == "BertForSequenceClassification"
    acc = state.get("test_acc") if classifier else None
    tag, pipe, example = {
        "BertForSequenceClassification": ("text-classification", PIPE_CLASSIFIER, EXAMPLE_CLASSIFIER),
        "BertModel": ("feature-extraction", PIPE_ENCODER, EXAMPLE_ENCODER),
    }.get(arch, ("fill-mask", PIPE_PRETRAIN, EXAMPLE_PRETRAIN))
    if classifier:
        about = f"Fine-tuned by train.py for NSMC sentiment (labels 0 = {LABELS[0]}, 1 = {LABELS[1]})" + (
            f"; test accuracy {acc:.4f} on train.py's --test file, at epoch {state.get('epoch', '?')}, "
            "the best on validation."
            if acc is not None
            else "."
        )
        pipe_note = (
            f"The tokenizer cuts a review to {n_seq} tokens with `truncation=True`, as train.py and predict.py do; "
            "the scores are predict.py's probabilities."
        )
        n_seq_note = f"It was fine-tuned on reviews cut to {n_seq} tokens."
    elif arch == "BertModel":
        steps = f", {state['step']} steps" if "step" in state else ""
        about = f"The encoder of an ELECTRA discriminator pretrained by pretrain.py --objective electra{steps}."
        pipe_note = "The encoder alone (no pretraining heads): fine-tune it, e.g. `python train.py --pretrain DIR`."
        n_seq_note = f"At most {d['max_position_embeddings']} tokens."
    else:
        steps = f", {state['step']} steps" if "step" in state else ""
        about = f"Pretrained by pretrain.py (masked LM + next sentence prediction){steps}."
        pipe_note = (
            "`[MASK]` stands for one SentencePiece piece; a space before it is a piece of its own (`▁`), as "
            "SentencePiece encodes the text. `AutoModelForMaskedLM` loads the masked-LM head "
            "(the NSP head is left out)."
        )
        n_seq_note = f"At most {d['max_position_embeddings']} tokens."
    return CARD.format(
        license=license,
        tag=tag,
        datasets="".join(f"- {x}\n" for x in datasets).rstrip("\n"),
        metrics=METRICS.format(name=name, acc=acc) if acc is not None else "",
        name=name,
        source=source,
        arch=arch,
        layers=d["num_hidden_layers"],
        hidden=d["hidden_size"],
        heads=d["num_attention_heads"],
        vocab=d["vocab_size"],
        about=about,
        weights=weights,
        pipe=pipe.format(name=name),
        pipe_note=pipe_note,
        cls=CLS_ID,
        sep=SEP_ID,
        pad=PAD_ID,
        n_seq_note=n_seq_note,
        example=example.format(n_seq=n_seq),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", default="save_pretrain.pth", help="checkpoint from pretrain.py or train.py")
    p.add_argument("--vocab", default="kowiki.model", help="the SentencePiece model it was trained with")
    p.add_argument("--output", default="hf_export", help="directory to write")
    p.add_argument(
        "--bin", action="store_true", help="write pytorch_model.bin (torch.save) instead of model.safetensors"
    )
    p.add_argument("--license", default="cc-by-sa-4.0", help="the model card's license (Wikipedia text is CC BY-SA)")
    p.add_argument(
        "--datasets",
        default=None,
        help="the model card's Hub dataset ids, comma-separated (default: e9t/nsmc for a classifier, "
        "wikimedia/wikipedia for a pretraining checkpoint)",
    )
    args = p.parse_args(argv)
    if os.path.isfile(args.output):
        raise UserError(f"--output {args.output} is a file; pass a directory")
    state = load_checkpoint(args.pretrain, "run `python pretrain.py` or `python train.py` to make one")
    sp = load_vocab(args.vocab)
    vocab_size = BertConfig.from_dict(state["config"]).vocab_size
    if sp.get_piece_size() != vocab_size:
        raise UserError(
            f"{args.pretrain} was trained with a vocabulary of {vocab_size} pieces but {args.vocab} "
            f"has {sp.get_piece_size()}; pass the --vocab it was trained with"
        )
    d = export(state, args.output, safetensors=not args.bin)
    classifier = d["architectures"] == ["BertForSequenceClassification"]
    n_seq = state.get("n_seq", d["max_position_embeddings"])  # train.py's --n_seq, where the checkpoint has it
    write_tokenizer(args.vocab, args.output, n_seq)
    shutil.copyfile(args.vocab, os.path.join(args.output, "spiece.model"))
    weights = "pytorch_model.bin" if args.bin else "model.safetensors"
    datasets = (args.datasets or ("e9t/nsmc" if classifier else "wikimedia/wikipedia")).split(",")
    name = os.path.basename(os.path.normpath(args.output))
    card = model_card(state, d, name, os.path.basename(args.pretrain), weights, args.license, datasets, n_seq)
    with open(os.path.join(args.output, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    print(
        f"wrote {args.output}/: config.json, {weights}, tokenizer.json, tokenizer_config.json, "
        f"special_tokens_map.json, spiece.model, README.md ({d['architectures'][0]}, model_max_length {n_seq})"
    )


if __name__ == "__main__":
    main_guard(main)
