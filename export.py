"""Export a checkpoint as a Hugging Face BERT directory; transformers is not needed to write it.

    python export.py --pretrain save_pretrain.pth --output hf_export   # -> transformers.BertForPreTraining
    python export.py --pretrain save_best.pth --output hf_nsmc         # -> transformers.BertForSequenceClassification
    python export.py --pretrain save_best.pth --vocab kowiki.model --output hf_nsmc
    python export.py --pretrain electra.pth --output hf_electra         # --objective electra: the encoder -> transformers.BertModel

writes config.json, pytorch_model.bin, spiece.model (the SentencePiece model, copied) and README.md
(how to tokenize as our scripts do). Load it with `BertForPreTraining.from_pretrained("hf_export")`;
the way back is `python train.py --pretrain hf_export --config hf_export/config.json --vocab hf_export/spiece.model`.
"""

import argparse
import json
import os
import shutil

from checkpoint import encoder_weights, load_checkpoint, save_checkpoint
from errors import UserError, main_guard
from model import BertConfig
from predict import LABELS
from vocab import CLS_ID, PAD_ID, SEP_ID, load_vocab


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


def export(state, out):
    """Write config.json and pytorch_model.bin of checkpoint `state` into directory `out`; -> the config dict."""
    config = BertConfig.from_dict(state["config"])
    classifier = "classifier.weight" in state["model"]
    # pretrain.py --objective electra: the discriminator's encoder is the model; its heads and the generator
    # have no place in a BERT class, so it goes out as a BertModel (what a fine-tuning script starts from)
    electra = "discriminator_predictions.dense.weight" in state["model"]
    if os.path.exists(os.path.join(out, "model.safetensors")):
        # transformers (and load_checkpoint) would read it instead of the weights written here
        raise UserError(f"{out} already holds a model.safetensors; pass another --output")
    os.makedirs(out, exist_ok=True)
    d = hf_config(config, classifier, "BertModel" if electra else None)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2)
    # The state dict as it is: the tied decoder weight and bias share storage with the word embedding
    # and cls.predictions.bias, so torch.save writes each matrix once.
    save_checkpoint(os.path.join(out, "pytorch_model.bin"), encoder_weights(state) if electra else dict(state["model"]))
    return d


README = """# {name}

A BERT exported by export.py from `{source}`: {arch}, num_hidden_layers={layers}, hidden_size={hidden},
num_attention_heads={heads}, vocab_size={vocab}. Files: `config.json`, `pytorch_model.bin`, `spiece.model` (SentencePiece).

Tokenize as the training scripts did: SentencePiece ids, `[CLS]={cls}` first, `[SEP]={sep}` after each
segment, segment (token type) ids 0 over `[CLS] A [SEP]` and 1 over `B [SEP]`, padding with `[PAD]={pad}`
and an attention mask of 1 on real tokens. {n_seq_note}

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", default="save_pretrain.pth", help="checkpoint from pretrain.py or train.py")
    p.add_argument("--vocab", default="kowiki.model", help="the SentencePiece model it was trained with")
    p.add_argument("--output", default="hf_export", help="directory to write")
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
    d = export(state, args.output)
    shutil.copyfile(args.vocab, os.path.join(args.output, "spiece.model"))
    classifier = d["architectures"] == ["BertForSequenceClassification"]
    n_seq = state.get("n_seq", d["max_position_embeddings"])
    examples = {"BertForSequenceClassification": EXAMPLE_CLASSIFIER, "BertModel": EXAMPLE_ENCODER}
    example = examples.get(d["architectures"][0], EXAMPLE_PRETRAIN).format(n_seq=n_seq)
    n_seq_note = (
        f"It was fine-tuned on reviews cut to {n_seq} tokens; labels 0 = {LABELS[0]}, 1 = {LABELS[1]}."
        if classifier
        else f"At most {d['max_position_embeddings']} tokens."
    )
    name = os.path.basename(os.path.normpath(args.output))
    with open(os.path.join(args.output, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            README.format(
                name=name,
                source=os.path.basename(args.pretrain),
                arch=d["architectures"][0],
                layers=d["num_hidden_layers"],
                hidden=d["hidden_size"],
                heads=d["num_attention_heads"],
                vocab=d["vocab_size"],
                cls=CLS_ID,
                sep=SEP_ID,
                pad=PAD_ID,
                n_seq_note=n_seq_note,
                example=example,
            )
        )
    print(f"wrote {args.output}/: config.json, pytorch_model.bin, spiece.model, README.md ({d['architectures'][0]})")


if __name__ == "__main__":
    main_guard(main)
