"""Our BERT is Hugging Face's: equal outputs both ways, and checkpoints cross over (export.py; load_checkpoint on a directory).

transformers is a test-only dependency: without it these tests are skipped. `pytest -s tests/test_hf.py`
prints the largest absolute difference per output and config.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export
import predict
import pretrain
import train
from checkpoint import load_checkpoint
from errors import UserError
from model import BertConfig, BertForPreTraining, BertForSequenceClassification
from nsmc import read_nsmc
from vocab import CLS_ID, SEP_ID

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # no load reports or progress bars in the test output
transformers.logging.disable_progress_bar()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
ATOL = 1e-5
CONFIGS = {  # odd vocabularies; 64, 32 and 64 dims per head; one LayerNorm eps and type vocabulary off the default
    "h64-4heads-v301": {
        "vocab_size": 301,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 32,
    },
    "h96-3heads-v1007": {
        "vocab_size": 1007,
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "intermediate_size": 200,
        "max_position_embeddings": 40,
    },
    "h128-2heads-v257-eps1e-5": {
        "vocab_size": 257,
        "hidden_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 20,
        "type_vocab_size": 3,
        "layer_norm_eps": 1e-5,
    },
}
# the sample vocabulary (1000 + 7 pieces), so train.py and pretrain.py can run on it
TINY = {
    "vocab_size": 1007,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def randomize(model, seed):
    """Weights far from BERT's init: with std 0.02 every output is near zero, and a difference could hide under 1e-5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight comes once
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + ("LayerNorm.weight" in name))
    return model.eval()


def make_batch(config, seed=0):
    """[CLS] A [SEP] B [SEP] with both segments; rows 1 and 2 end in padding. Fills every position for the last config."""
    B, T = 3, min(24, config.max_position_embeddings)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, config.vocab_size, (B, T), generator=g)
    lengths = [T, T - 7, T // 3]
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()
    types = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        a = n // 2
        ids[i, 0], ids[i, a - 1], ids[i, n - 1] = CLS_ID, SEP_ID, SEP_ID
        types[i, a:n] = 1
    ids[mask == 0] = 0
    return ids, types, mask


@torch.no_grad()
def ours_outputs(pre, clf, batch):
    mlm, nsp = pre(*batch)
    return {"mlm": mlm, "nsp": nsp, "pooled": pre.bert(*batch)[1], "classifier": clf(*batch)}


@torch.no_grad()
def hf_outputs(pre, clf, batch):
    kw = dict(zip(["input_ids", "token_type_ids", "attention_mask"], batch))
    out = pre(**kw)
    return {
        "mlm": out.prediction_logits,
        "nsp": out.seq_relationship_logits,
        "pooled": pre.bert(**kw).pooler_output,
        "classifier": clf(**kw).logits,
    }


def assert_equal(a, b, what):
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    print(
        f"{what}: max |diff| " + ", ".join(f"{k} {d:.1e} (of |x| <= {a[k].abs().max():.1f})" for k, d in diffs.items())
    )
    for k in a:
        assert a[k].std() > 0.05, f"{what}: {k} is nearly constant, so equality says little"
        assert diffs[k] <= ATOL, f"{what}: {k} differs by {diffs[k]:.2e}"


def no_loading_issues(info):
    return not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))


@pytest.mark.parametrize("name", CONFIGS)
def test_ours_to_hf(name, tmp_path):
    config = BertConfig(**CONFIGS[name])
    pre = randomize(BertForPreTraining(config), 1)
    clf = randomize(BertForSequenceClassification(config), 2)
    export.export({"model": pre.state_dict(), "config": config.to_dict()}, str(tmp_path / "pre"))
    export.export({"model": clf.state_dict(), "config": config.to_dict()}, str(tmp_path / "clf"))
    batch = make_batch(config)
    ours = ours_outputs(pre, clf, batch)
    for attn in ("eager", "sdpa"):
        hf_pre, info = transformers.BertForPreTraining.from_pretrained(
            tmp_path / "pre", output_loading_info=True, attn_implementation=attn
        )
        assert no_loading_issues(info), info
        hf_clf, info = transformers.BertForSequenceClassification.from_pretrained(
            tmp_path / "clf", output_loading_info=True, attn_implementation=attn
        )
        assert no_loading_issues(info), info
        assert hf_clf.config.id2label == {0: "negative", 1: "positive"} and hf_clf.config.num_labels == 2
        assert_equal(ours, hf_outputs(hf_pre.eval(), hf_clf.eval(), batch), f"{name} ours -> HF ({attn})")
    # the tolerance can tell: Hugging Face's tanh GELU instead of the exact one is far outside it
    hf_tanh = transformers.BertForPreTraining.from_pretrained(tmp_path / "pre", hidden_act="gelu_new").eval()
    assert (hf_outputs(hf_tanh, hf_clf, batch)["mlm"] - ours["mlm"]).abs().max() > 10 * ATOL


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_to_ours(name, tmp_path):
    hf_config = transformers.BertConfig(**CONFIGS[name])
    hf_pre = randomize(transformers.BertForPreTraining(hf_config), 3)
    hf_clf = randomize(transformers.BertForSequenceClassification(hf_config), 4)
    hf_pre.save_pretrained(tmp_path / "pre")  # model.safetensors, the tied decoder weight and bias left out
    hf_clf.save_pretrained(tmp_path / "clf")
    pre_state, clf_state = load_checkpoint(str(tmp_path / "pre")), load_checkpoint(str(tmp_path / "clf"))
    assert (
        pre_state["config"] == BertConfig(**CONFIGS[name]).to_dict()
        and pre_state["vocab_size"] == CONFIGS[name]["vocab_size"]
    )
    pre = BertForPreTraining(BertConfig.from_dict(pre_state["config"]))
    pre.load_state_dict(pre_state["model"])  # strict: every weight is there, nothing more
    clf = BertForSequenceClassification(BertConfig.from_dict(clf_state["config"]))
    clf.load_state_dict(clf_state["model"])
    batch = make_batch(pre.config, seed=1)
    assert_equal(hf_outputs(hf_pre, hf_clf, batch), ours_outputs(pre.eval(), clf.eval(), batch), f"{name} HF -> ours")


def test_import_name_variants(tmp_path):
    """A bare BertModel (no `bert.` prefix) and a pytorch_model.bin with pre-2019 gamma/beta names and position_ids."""
    hf = randomize(transformers.BertModel(transformers.BertConfig(**CONFIGS["h64-4heads-v301"])), 5)
    hf.save_pretrained(tmp_path / "bare")
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((tmp_path / "bare" / "config.json").read_text())
    sd = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf.state_dict().items()
    }
    torch.save({**sd, "embeddings.position_ids": torch.arange(32)[None]}, old / "pytorch_model.bin")
    batch = make_batch(BertConfig(**CONFIGS["h64-4heads-v301"]))
    with torch.no_grad():
        want = hf(**dict(zip(["input_ids", "token_type_ids", "attention_mask"], batch))).pooler_output
    for d in ("bare", "old"):
        state = load_checkpoint(str(tmp_path / d))
        clf = BertForSequenceClassification(BertConfig.from_dict(state["config"])).eval()
        missing, unexpected = clf.load_state_dict(state["model"], strict=False)
        assert not unexpected and sorted(missing) == ["classifier.bias", "classifier.weight"]
        with torch.no_grad():
            assert (clf.bert(*batch)[1] - want).abs().max() <= ATOL


def test_import_errors(tmp_path, monkeypatch):
    hf = transformers.BertModel(transformers.BertConfig(**CONFIGS["h64-4heads-v301"], hidden_act="gelu_new"))
    hf.save_pretrained(tmp_path / "tanh")
    with pytest.raises(UserError, match="hidden_act='gelu_new'"):
        load_checkpoint(str(tmp_path / "tanh"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json not found"):
        load_checkpoint(str(tmp_path / "empty"))
    cfg = json.loads((tmp_path / "tanh" / "config.json").read_text())
    (tmp_path / "tanh" / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    assert load_checkpoint(str(tmp_path / "tanh"))["vocab_size"] == 301
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    with pytest.raises(UserError, match="pip install safetensors"):
        load_checkpoint(str(tmp_path / "tanh"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A Hugging Face BertForPreTraining over the sample vocabulary, as save_pretrained writes it."""
    d = tmp_path_factory.mktemp("hf") / "tiny-bert"
    randomize(transformers.BertForPreTraining(transformers.BertConfig(**TINY)), 6).save_pretrained(d)
    return d


def hf_weights(d):
    return transformers.BertForPreTraining.from_pretrained(d).state_dict()


def nsmc_head(dst, n, src="ratings_train.txt"):
    with open(os.path.join(SAMPLE, src), encoding="utf-8") as f:
        lines = f.readlines()[: n + 1]
    dst.write_text("".join(lines), encoding="utf-8")
    return str(dst)


def run_readme(out, monkeypatch, replace=None):
    """Run the python snippet of export.py's README.md from the directory's parent, as it assumes; -> its variables."""
    snippet = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(encoding="utf-8"), re.DOTALL).group(1)
    for old, new in (replace or {}).items():
        assert old in snippet
        snippet = snippet.replace(old, new)
    monkeypatch.chdir(out.parent)
    namespace = {}
    exec(snippet, namespace)  # noqa: S102 (our own README)
    return namespace


def test_train_py_from_hf_dir(tmp_path, sample_spm, hf_dir):
    """train.py --pretrain DIR, as a user runs it; with --lr 0 the saved encoder must be the directory's."""
    save = tmp_path / "best.pth"
    cmd = [
        sys.executable,
        "train.py",
        "--pretrain",
        str(hf_dir),
        "--config",
        str(hf_dir / "config.json"),
        "--vocab",
        sample_spm,
        "--train",
        nsmc_head(tmp_path / "train.txt", 40),
        "--test",
        nsmc_head(tmp_path / "test.txt", 20, "ratings_test.txt"),
        "--save",
        str(save),
        "--epoch",
        "1",
        "--batch",
        "8",
        "--lr",
        "0",
        "--n_seq",
        "32",
        "--valid",
        "0",
        "--fp32",
        "--log_dir",
        str(tmp_path / "log"),
    ]
    p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"fine-tuning from {hf_dir}" in p.stdout
    saved, want = torch.load(save, weights_only=True)["model"], hf_weights(hf_dir)
    for k, v in saved.items():
        if k.startswith("bert."):
            assert torch.equal(v, want[k]), k


def test_pretrain_py_from_hf_dir_and_back(tmp_path, sample_spm, hf_dir, monkeypatch):
    """pretrain.py --pretrain DIR starts from its weights (--lr 0 keeps them); export.py gives them back to transformers."""
    rng = np.random.default_rng(0)
    with open(tmp_path / "inst.json", "w") as f:
        for _ in range(8):
            a, b = rng.integers(7, 1007, 10).tolist(), rng.integers(7, 1007, 8).tolist()
            f.write(
                json.dumps(
                    {
                        "tokens": [CLS_ID, *a, SEP_ID, *b, SEP_ID],
                        "segment": [0] * 12 + [1] * 9,
                        "is_next": int(rng.integers(2)),
                        "mask_pos": [2, 14],
                        "mask_label": [a[1], b[1]],
                    }
                )
                + "\n"
            )
    save = tmp_path / "pre.pth"
    pretrain.main(
        [
            "--pretrain",
            str(hf_dir),
            "--config",
            str(hf_dir / "config.json"),
            "--vocab",
            sample_spm,
            "--input",
            str(tmp_path / "inst.json"),
            "--save",
            str(save),
            "--epoch",
            "1",
            "--batch",
            "4",
            "--lr",
            "0",
            "--fp32",
            "--workers",
            "0",
            "--log_dir",
            str(tmp_path / "log"),
        ]
    )
    want = hf_weights(hf_dir)
    state = torch.load(save, weights_only=True)
    assert state["step"] == 2 and set(state["model"]) == set(want)
    for k, v in state["model"].items():
        assert torch.equal(v, want[k]), k

    out = tmp_path / "exported"
    export.main(["--pretrain", str(save), "--vocab", sample_spm, "--output", str(out)])
    hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert no_loading_issues(info), info
    assert all(torch.equal(v, want[k]) for k, v in hf.state_dict().items())
    assert (out / "spiece.model").read_bytes() == Path(sample_spm).read_bytes()
    assert run_readme(out, monkeypatch)["out"].prediction_logits.shape[-1] == 1007


def test_finetuned_export_gives_predict_py_labels(tmp_path, sample_spm, monkeypatch, capsys):
    """train.py's checkpoint, exported and run by transformers as README.md says, labels the 5,003 sample reviews as predict.py does."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    best = tmp_path / "best.pth"
    train.main(
        [
            "--config",
            str(config),
            "--vocab",
            sample_spm,
            "--train",
            nsmc_head(tmp_path / "train.txt", 1000),
            "--test",
            nsmc_head(tmp_path / "test.txt", 50, "ratings_test.txt"),
            "--save",
            str(best),
            "--epoch",
            "3",
            "--batch",
            "32",
            "--lr",
            "5e-3",
            "--n_seq",
            "48",
            "--valid",
            "0",
            "--fp32",
            "--log_dir",
            str(tmp_path / "log"),
        ]
    )
    out = tmp_path / "nsmc-bert"
    export.main(["--pretrain", str(best), "--vocab", sample_spm, "--output", str(out)])
    saved, back = (
        torch.load(best, weights_only=True)["model"],
        load_checkpoint(str(out))["model"],
    )  # and our reader takes it back
    assert set(back) == set(saved) and all(torch.equal(back[k], v) for k, v in saved.items())

    reviews, _ = read_nsmc(os.path.join(SAMPLE, "ratings_test.txt"))
    model, sp, n_seq = predict.load_classifier(str(best), sample_spm)
    assert n_seq == 48
    ours = [label for label, _ in predict.predict(model, sp, reviews, n_seq)]

    # the README's own snippet, on every review
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "[CLS]" in readme and "[PAD]=0" in readme and f"cut to {n_seq} tokens" in readme
    (tmp_path / "reviews.json").write_text(json.dumps(reviews), encoding="utf-8")
    read_them = 'import json; reviews = json.load(open("reviews.json", encoding="utf-8"))'
    logits = run_readme(out, monkeypatch, {'reviews = ["이 영화 정말 재밌어요", "배우 연기가 최악이다"]': read_them})[
        "logits"
    ]
    capsys.readouterr()  # its print of 5,003 labels
    theirs = logits.argmax(-1).tolist()
    margin = (logits[:, 1] - logits[:, 0]).abs().min().item()
    print(f"{len(reviews)} reviews: {np.mean(ours):.1%} positive; smallest logit margin {margin:.1e}")
    assert 0.1 < np.mean(ours) < 0.9, "the classifier should not give one label to every review"
    assert theirs == ours
