"""probe.py: held-out masked LM and test accuracy as is / with each segment shuffled / with random context."""

import contextlib
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, write_instances

import pretrain
import probe
from checkpoint import save_checkpoint
from errors import UserError
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, ElectraForPreTraining, generator_config
from store import PretrainStore
from training import mixed_precision
from vocab import CLS_ID, SEP_ID

MICRO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "vocab_size": 1007,
}


def test_shuffle_keeps_each_target_with_its_piece_and_specials_in_place():
    rng = np.random.default_rng(0)
    tokens = np.array([CLS_ID, 10, 11, 12, 13, SEP_ID, 20, 21, 22, SEP_ID])
    pos = np.array([2, 4, 7])
    for seed in range(20):
        shuffled, new_pos = probe.shuffle_segments(tokens, 6, pos, np.random.default_rng(seed))
        assert list(shuffled[[0, 5, 9]]) == [CLS_ID, SEP_ID, SEP_ID]
        assert sorted(shuffled[1:5]) == [10, 11, 12, 13] and sorted(shuffled[6:9]) == [20, 21, 22]
        assert list(shuffled[new_pos]) == list(tokens[pos])  # each target moved with its piece
    replaced = probe.replace_context(tokens, pos, 1007, rng)
    assert list(replaced[pos]) == list(tokens[pos]) and list(replaced[[0, 5, 9]]) == [CLS_ID, SEP_ID, SEP_ID]
    others = [i for i in range(10) if i not in (0, 2, 4, 5, 7, 9)]
    assert all(replaced[i] != tokens[i] and replaced[i] >= 7 for i in others)


def test_a_model_without_positions_scores_the_same_shuffled(tmp_path):
    """Without position embeddings BERT cannot see order: shuffling must leave its loss unchanged, which holds only
    if every target moved with its piece. With position embeddings the loss changes."""
    data = PretrainStore(write_instances(tmp_path / "inst.json", 64))
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_dict(MICRO))
    fp32 = contextlib.nullcontext()
    shuffled = probe.Probed(data, "shuffled", 1007)
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.normal_(std=0.5)
    with_pos = (
        pretrain.evaluate(model, data, 16, torch.device("cpu"), fp32)["mlm_loss"],
        pretrain.evaluate(model, shuffled, 16, torch.device("cpu"), fp32)["mlm_loss"],
    )
    assert abs(with_pos[0] - with_pos[1]) > 1e-3
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.zero_()
    as_is = pretrain.evaluate(model, data, 16, torch.device("cpu"), fp32)["mlm_loss"]
    assert pretrain.evaluate(model, shuffled, 16, torch.device("cpu"), fp32)["mlm_loss"] == pytest.approx(
        as_is, abs=1e-5
    )


def save(path, model):
    save_checkpoint(
        str(path),
        {"model": model.state_dict(), "config": model.config.to_dict(), "vocab_size": model.config.vocab_size},
    )
    return str(path)


def test_cli_prints_each_probe_and_rejects_the_wrong_checkpoint(sample_spm, tmp_path, capsys):
    instances = write_instances(tmp_path / "inst.json", 40)
    torch.manual_seed(0)
    pre = save(tmp_path / "pre.pth", BertForPreTraining(BertConfig.from_dict(MICRO)))
    probe.main(["--pretrain", pre, "--input", instances, "--vocab", sample_spm, "--batch", "8"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{pre} on 40 instances") and [line.split("\t")[0].strip() for line in out[1:]] == [
        "as is",
        "shuffled",
        "no context",
    ]
    autocast = mixed_precision(torch.device("cpu"))[0]  # probe.py's: bf16 where native, fp32 elsewhere
    model = probe.load_model(pre, BertForPreTraining, probe.load_vocab(sample_spm), "")
    expected = pretrain.evaluate(model, PretrainStore(instances), 8, torch.device("cpu"), autocast)["mlm_loss"]
    assert f"masked-LM loss {expected:.4f}" in out[1]

    test = os.path.join(ROOT, "data", "sample", "ratings_test.txt")
    clf = save(tmp_path / "clf.pth", BertForSequenceClassification(BertConfig.from_dict(MICRO)))
    probe.main(["--save", clf, "--test", test, "--vocab", sample_spm, "--n_seq", "64"])
    out = capsys.readouterr().out.splitlines()
    assert "5,003 reviews" in out[0] and len(out) == 3
    for line, mode in zip(out[1:], ["as is", "shuffled"]):
        assert line.split("\t")[0].strip() == mode and 0 <= float(line.rsplit(" ", 1)[1]) <= 1

    with pytest.raises(UserError, match="not a pretrain.py checkpoint"):
        probe.main(["--pretrain", clf, "--input", instances, "--vocab", sample_spm])
    with pytest.raises(UserError, match="not a train.py checkpoint"):
        probe.main(["--save", pre, "--test", test, "--vocab", sample_spm])
    with pytest.raises(SystemExit):
        probe.main(["--pretrain", pre, "--vocab", sample_spm])  # no --input


def test_an_electra_checkpoint_is_probed_with_its_generator_and_discriminator(sample_spm, tmp_path, capsys):
    """An ELECTRA pretraining checkpoint (a kept one: no generator config stored) is probed with its own generator,
    sized from its weights; the printed figures are pretrain.evaluate's with --objective electra. A classifier
    probe of it is refused, as for a masked-LM checkpoint."""
    instances = write_instances(tmp_path / "inst.json", 40)
    torch.manual_seed(0)
    config = BertConfig.from_dict(MICRO)
    electra = ElectraForPreTraining(config, generator_config(config, 0.5))  # generator hidden 16
    path = str(tmp_path / "electra.pth")
    save_checkpoint(path, {"model": electra.state_dict(), "config": config.to_dict(),
                           "vocab_size": config.vocab_size, "objective": "electra", "step": 1})
    probe.main(["--pretrain", path, "--input", instances, "--vocab", sample_spm, "--batch", "8"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0].strip() for line in out[1:]] == ["as is", "shuffled", "no context"]
    model = probe.load_model(path, BertForPreTraining, probe.load_vocab(sample_spm), "")
    assert isinstance(model, ElectraForPreTraining) and model.gen_config.hidden_size == 16
    autocast = mixed_precision(torch.device("cpu"))[0]
    expected = pretrain.evaluate(model, PretrainStore(instances), 8, torch.device("cpu"), autocast, "electra")
    assert f"generator masked-LM loss {expected['gen_loss']:.4f}" in out[1]
    assert f"discriminator accuracy {expected['disc_acc']:.4f}" in out[1]
    with pytest.raises(UserError, match="not a train.py checkpoint"):
        probe.main(["--save", path, "--test", os.path.join(ROOT, "data", "sample", "ratings_test.txt"),
                    "--vocab", sample_spm])
