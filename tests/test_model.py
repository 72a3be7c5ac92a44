import pytest
import torch
import torch.nn.functional as F
from conftest import CFG

from model import BertConfig, BertForPreTraining, BertForSequenceClassification, configure_optimizer


def batch(B=3, T=20, vocab=301, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1:, 12:] = 0
    mask[2:, 5:] = 0
    ids[mask == 0] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2 :] = 1
    types[mask == 0] = 0
    return ids, types, mask


def test_shapes():
    torch.manual_seed(0)
    config = BertConfig(**CFG)
    model = BertForPreTraining(config).eval()
    ids, types, mask = batch()
    mlm, nsp = model(ids, types, mask)
    assert mlm.shape == (3, 20, 301) and nsp.shape == (3, 2)
    pos = torch.tensor([[1, 4], [2, 3], [0, 1]])
    mlm_at, _ = model(ids, types, mask, pos)
    assert mlm_at.shape == (3, 2, 301)
    # logits at chosen positions are the full logits gathered there
    torch.testing.assert_close(mlm_at, mlm.gather(1, pos[..., None].expand(-1, -1, 301)))
    seq, pooled = model.bert(ids, types, mask)
    assert seq.shape == (3, 20, 64) and pooled.shape == (3, 64)
    assert BertForSequenceClassification(config).eval()(ids, types, mask).shape == (3, 2)


def test_padding_invariance():
    """Appending pads (masked out) leaves the outputs at the real tokens unchanged."""
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**CFG)).eval()
    ids, types, mask = batch(B=2, T=10)
    mask[:] = 1
    ids[ids == 0] = 9
    pad = torch.zeros(2, 7, dtype=torch.long)
    ids2, types2, mask2 = torch.cat([ids, pad], 1), torch.cat([types, pad], 1), torch.cat([mask, pad], 1)
    with torch.no_grad():
        a_mlm, a_nsp = model(ids, types, mask)
        b_mlm, b_nsp = model(ids2, types2, mask2)
    torch.testing.assert_close(b_mlm[:, :10], a_mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b_nsp, a_nsp, atol=1e-5, rtol=1e-5)
    # and without the mask the pads do change them: the test can tell
    with torch.no_grad():
        c_mlm, _ = model(ids2, types2, torch.ones_like(mask2))
    assert (c_mlm[:, :10] - a_mlm).abs().max() > 1e-3


def test_tied_weights_and_hf_names():
    model = BertForPreTraining(BertConfig(**CFG))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.bias is model.cls.predictions.decoder.bias
    names = set(model.state_dict())
    for name in [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.1.attention.self.query.weight",
        "bert.encoder.layer.0.attention.output.LayerNorm.bias",
        "bert.encoder.layer.0.intermediate.dense.weight",
        "bert.encoder.layer.0.output.dense.weight",
        "bert.pooler.dense.weight",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.decoder.weight",
        "cls.predictions.bias",
        "cls.seq_relationship.weight",
    ]:
        assert name in names, name
    # a gradient step moves the shared matrix once, seen from both sides
    ids, types, mask = batch()
    mlm, _ = model(ids, types, mask)
    mlm.sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is model.cls.predictions.decoder.weight.grad


def test_no_weight_decay_on_bias_and_layernorm():
    model = BertForPreTraining(BertConfig(**CFG))
    opt = configure_optimizer(model, 1e-3, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids_nd = {id(p) for p in no_decay["params"]}
    assert id(model.bert.embeddings.LayerNorm.weight) in ids_nd
    assert id(model.cls.predictions.bias) in ids_nd
    assert id(model.bert.encoder.layer[0].attention.self.query.weight) not in ids_nd
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_layer_wise_lr_decay():
    """--layer_decay 0.5 on 2 layers: the head at lr, the pooler at lr/2, the top layer lr/4, the bottom one lr/8, the
    embeddings lr/16; weight decay on matrices only, as with one LR; the scheduler keeps the ratios."""
    model = BertForSequenceClassification(BertConfig(**CFG))
    opt = configure_optimizer(model, 1e-3, weight_decay=0.01, layer_decay=0.5)
    lr, decay = {}, {}
    for g in opt.param_groups:
        for p in g["params"]:
            lr[id(p)], decay[id(p)] = g["lr"], g["weight_decay"]
    assert len(lr) == len(list(model.parameters()))
    layers = model.bert.encoder.layer
    for p, want in [
        (model.classifier.weight, 1e-3),
        (model.bert.pooler.dense.bias, 5e-4),
        (layers[1].output.dense.weight, 2.5e-4),
        (layers[1].attention.self.query.weight, 2.5e-4),
        (layers[0].output.LayerNorm.weight, 1.25e-4),
        (model.bert.embeddings.word_embeddings.weight, 6.25e-5),
        (model.bert.embeddings.LayerNorm.bias, 6.25e-5),
    ]:
        assert lr[id(p)] == pytest.approx(want)
        assert decay[id(p)] == (0.01 if p.dim() >= 2 else 0.0)
    assert opt.param_groups[0]["lr"] == 1e-3  # the head's group first: get_last_lr()[0] is --lr's schedule
    before = [g["lr"] for g in opt.param_groups]
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1)  # scales each group's own LR
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * x for x in before])
    assert len(configure_optimizer(model, 1e-3).param_groups) == 2  # 1: the two groups of before


def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    opt = configure_optimizer(model, 1e-3)
    ids, types, mask = batch(B=8, T=16)
    pos = torch.randint(1, 16, (8, 3))
    labels = ids.gather(1, pos)
    nxt = torch.randint(0, 2, (8,))

    def loss_fn():
        mlm, nsp = model(ids, types, mask, pos)
        return F.cross_entropy(mlm.flatten(0, 1), labels.flatten()) + F.cross_entropy(nsp, nxt)

    first = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.5 * first


def test_classifier_loads_pretrained_encoder():
    config = BertConfig(**CFG)
    pre = BertForPreTraining(config)
    clf = BertForSequenceClassification(config)
    missing, unexpected = clf.load_state_dict(
        {k: v for k, v in pre.state_dict().items() if k.startswith("bert.")}, strict=False
    )
    assert not unexpected and sorted(missing) == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(
        clf.bert.encoder.layer[1].output.dense.weight, pre.bert.encoder.layer[1].output.dense.weight
    )
