"""pretrain.py --objective electra (replaced-token detection): the model's shapes, its one shared embedding
table, the discriminator's labels, a few steps lowering the loss, exact resume, DDP, the NaN guard, and
train.py / export.py reading the discriminator's encoder.

python -m pytest tests/test_electra.py
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import CFG, MICRO0, ROOT, assert_same_state, micro_setup, nsmc_head, read_log, torchrun
from torch import nn

import export
import model as model_py
import pretrain
import train
from checkpoint import load_checkpoint
from errors import UserError
from model import BertConfig, ElectraForPreTraining, generator_config, replace_tokens, sample_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def as_batch(ids, types, mask, pos, label):
    """The dict pretrain.electra_losses reads, from batch()'s tensors."""
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "mask_pos": pos, "mask_label": label}


def batch(B=3, T=12, vocab=301, seed=0):
    """Ids as data.py leaves them: [MASK] (6) at the masked positions; mask_pos padded with 0, labels with -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    ids[:, 0] = 5
    pos = torch.tensor([[2, 4, 7], [1, 8, 0], [3, 0, 0]])
    label = ids.gather(1, pos).masked_fill(torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1]]).bool(), -100)
    ids = ids.scatter(1, pos, torch.where(label != -100, 6, ids.gather(1, pos)))
    return ids, torch.zeros_like(ids), mask, pos, label


def test_generator_config_is_a_quarter():
    config = BertConfig(**CFG)
    gen = generator_config(config)
    assert (gen.hidden_size, gen.intermediate_size, gen.num_attention_heads) == (16, 64, 1)
    assert gen.num_hidden_layers == 2 and gen.vocab_size == 301
    base = generator_config(BertConfig(hidden_size=768))
    assert (base.hidden_size, base.num_attention_heads) == (192, 3)  # ELECTRA's heads of 64
    assert generator_config(BertConfig(hidden_size=800)).num_attention_heads == 2  # 200 wide: 3 heads do not divide


def test_shapes_and_hf_names():
    torch.manual_seed(0)
    model = ElectraForPreTraining(BertConfig(**CFG), generator_config(BertConfig(**CFG))).eval()
    ids, types, mask, pos, label = batch()
    gen_logits, disc_logits, replaced = model(ids, types, mask, pos, label)
    assert gen_logits.shape == (3, 3, 301) and disc_logits.shape == (3, 12) and replaced.shape == (3, 12)
    assert replaced.dtype == torch.bool
    names = set(model.state_dict())
    for name in [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.1.attention.self.query.weight",
        "bert.pooler.dense.weight",
        "generator.embeddings_project.weight",
        "generator.encoder.layer.1.output.dense.weight",
        "generator_predictions.dense.weight",
        "generator_lm_head.weight",
        "discriminator_predictions.dense_prediction.weight",
    ]:
        assert name in names, name
    assert model.generator.encoder.layer[0].attention.self.query.weight.shape == (16, 16)
    assert model.generator_predictions.dense.weight.shape == (64, 16)  # back to the embedding size


def test_embeddings_are_one_tensor():
    config = BertConfig(**CFG)
    model = ElectraForPreTraining(config, generator_config(config))
    word = model.bert.embeddings.word_embeddings.weight
    assert model.generator_lm_head.weight is word
    # the model has exactly the discriminator's three embedding tables; the generator owns none
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert len(embeddings) == 3 and all(e in list(model.bert.embeddings.modules()) for e in embeddings)
    assert not any("embeddings." in k and "embeddings_project" not in k for k in model.generator.state_dict())
    # the generator's loss alone trains the shared word and position embeddings
    ids, types, mask, pos, label = batch()
    gen_logits, _, _ = model(ids, types, mask, pos, label)
    gen_logits.sum().backward()
    assert word.grad.abs().sum() > 0 and model.bert.embeddings.position_embeddings.weight.grad.abs().sum() > 0
    assert model.bert.encoder.layer[0].output.dense.weight.grad is None  # the sample stops the gradient
    # every parameter that trains is seen once by the optimizer; the unused pooler is frozen
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())
    opt = model_py.configure_optimizer(model, 1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_replaced_labels():
    ids, _, mask, pos, label = batch()
    original = ids.scatter(1, pos, torch.where(label != -100, label, ids.gather(1, pos)))
    sampled = label.clamp(min=0) + 1  # different from every original ...
    sampled[0, 1] = label[0, 1]  # ... except one, drawn right: not a replacement
    sampled[1, 2] = 99  # a padded slot (pointing at [CLS]) must write nothing
    fake, replaced = replace_tokens(ids, pos, label, sampled)
    want = torch.zeros_like(replaced)
    want[0, 2] = want[0, 7] = want[1, 1] = want[1, 8] = want[2, 3] = True
    assert torch.equal(replaced, want)
    assert torch.equal(fake[~want], original[~want])  # no [MASK] is left, unmasked tokens and pads stay
    assert torch.equal(fake[want], sampled[label != -100][[0, 2, 3, 4, 5]])
    assert not (fake == 6).any() and fake[0, 4] == label[0, 1]
    assert not replaced[mask == 0].any() and (fake[mask == 0] == 0).all()


class Stub(nn.Module):
    """Returns fixed discriminator logits and labels: electra_losses' reduction, seen from outside."""

    def __init__(self, disc_logits, replaced):
        super().__init__()
        self.disc_logits, self.replaced = disc_logits, replaced

    def forward(self, input_ids, token_type_ids, attention_mask, mask_pos, mask_label, generator=None):
        return torch.zeros(*mask_pos.shape, 301), self.disc_logits, self.replaced


def test_discriminator_loss_leaves_pads_out():
    ids, types, mask, pos, label = batch()
    b = as_batch(ids, types, mask, pos, label)
    replaced = torch.zeros(3, 12, dtype=torch.bool)
    replaced[0, 2] = True
    logits = torch.zeros(3, 12)
    logits[0, 2] = 3.0
    off = torch.autocast("cpu", enabled=False)
    _, disc_loss, counts = pretrain.electra_losses(Stub(logits, replaced), b, off)
    n_real = int(mask.sum())  # 12 + 9 + 5
    assert counts[5] == n_real == 26 and counts[4] == n_real  # all real tokens right (logit 3 > 0 on the replaced)
    want = torch.nn.functional.softplus(torch.tensor(-3.0)) + (n_real - 1) * torch.log(torch.tensor(2.0))
    torch.testing.assert_close(disc_loss, want)
    # whatever stands at the pads changes nothing
    logits[mask == 0], replaced[mask == 0] = -50.0, True
    _, disc_loss2, counts2 = pretrain.electra_losses(Stub(logits, replaced), b, off)
    assert disc_loss2 == disc_loss and torch.equal(counts2, counts)
    assert counts[2] == 6  # the generator's targets: the 6 masked positions, not the padded slots


def test_padding_changes_nothing_but_the_draws():
    """collate_pretrain pads to multiples of 16: with dropout off and the same draws, ELECTRA's losses, counts and
    gradients are those of the unpadded batch (so the padding only moves the random draws of dropout)."""
    torch.manual_seed(0)
    config = BertConfig(**CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ElectraForPreTraining(config, generator_config(config)).train()
    off = torch.autocast("cpu", enabled=False)

    def step(pad):
        ids, types, mask, pos, label = batch()
        ids, types, mask = (nn.functional.pad(t, (0, pad)) for t in (ids, types, mask))  # pads: id 0, mask 0
        b = as_batch(ids, types, mask, pos, label)
        model.zero_grad()
        gen_loss, disc_loss, counts = pretrain.electra_losses(model, b, off, torch.Generator().manual_seed(1))
        (gen_loss + 50 * disc_loss).backward()
        return counts, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    (counts, grads), (counts16, grads16) = step(0), step(4)  # T = 12, then padded to 16
    torch.testing.assert_close(counts16, counts)
    assert grads.keys() == grads16.keys()
    for k in grads:
        if not k.endswith("key.bias"):  # its gradient is 0 up to rounding (softmax ignores a shift per query)
            torch.testing.assert_close(grads16[k], grads[k], atol=1e-5, rtol=1e-4, msg=k)


def test_sampling_follows_the_softmax_without_gradient():
    logits = torch.tensor([[0.0, 0.0, -1e4], [5.0, -5.0, -5.0]]).repeat(2000, 1).requires_grad_()
    s = sample_tokens(logits, torch.Generator().manual_seed(0))
    assert not s.requires_grad and s.dtype == torch.long
    first = s[0::2]
    assert (first != 2).all() and 0.45 < (first == 0).float().mean() < 0.55  # two equal logits: half each
    assert (s[1::2] == 0).float().mean() > 0.99
    assert torch.equal(s, sample_tokens(logits, torch.Generator().manual_seed(0)))


def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    config = BertConfig(**CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ElectraForPreTraining(config, generator_config(config))
    opt = model_py.configure_optimizer(model, 1e-3)
    ids, types, mask, pos, label = batch(B=3, T=12)
    b = as_batch(ids, types, mask, pos, label)
    off = torch.autocast("cpu", enabled=False)

    def loss_fn():
        gen, disc, counts = pretrain.electra_losses(model, b, off)
        return gen / counts[2] + 50 * disc / counts[5], gen / counts[2]

    first, first_gen = (x.item() for x in loss_fn())
    for _ in range(30):
        opt.zero_grad()
        loss_fn()[0].backward()
        opt.step()
    loss, gen = loss_fn()
    assert loss.item() < 0.5 * first and gen.item() < 0.5 * first_gen


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_spm):
    return micro_setup(tmp_path_factory.mktemp("electra"), sample_spm, held_out=True)


def micro0_config(s):
    """MICRO0 (the micro config with dropout off) written beside the set-up's config -> its path."""
    path = s["dir"] / "micro0.json"
    path.write_text(json.dumps(MICRO0))
    return str(path)


def args_for(s, save, *extra):
    return [
        "--objective",
        "electra",
        "--config",
        s["config"],
        "--vocab",
        s["vocab"],
        "--input",
        s["instances"],
        "--save",
        str(save),
        "--epoch",
        "2",
        "--batch",
        "4",
        "--lr",
        "1e-3",
        "--fp32",
        "--save_steps",
        "1",
        "--log_every",
        "1",
        "--log_dir",
        str(save) + ".log",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(setup):
    save = setup["dir"] / "ref.pth"
    pretrain.main(args_for(setup, save, "--eval_input", setup["held_out"], "--eval_steps", "5"))
    return save


def test_pretrain_logs_generator_and_discriminator(setup, reference):
    rows = read_log(f"{reference}.log/log.csv")
    assert len(rows) == 24  # 48 instances / 4 a step x 2 epochs
    assert {"gen_loss", "gen_acc", "disc_loss", "disc_acc"} <= set(rows[0]) and "nsp_loss" not in rows[0]
    for r in rows:
        assert float(r["gen_loss"]) > 0 and 0 <= float(r["gen_acc"]) <= 1 and 0 <= float(r["disc_acc"]) <= 1
    assert float(rows[-1]["disc_loss"]) < float(rows[0]["disc_loss"])  # most tokens are original: learned fast
    evals = read_log(f"{reference}.log/eval.csv")
    assert [int(r["step"]) for r in evals] == [5, 10, 12, 15, 20, 24]
    assert set(evals[0]) == {"epoch", "step", "gen_loss", "gen_acc", "disc_acc"}
    state = torch.load(reference, weights_only=True)
    assert state["objective"] == "electra" and state["gen_config"]["hidden_size"] == 8
    assert "generator_lm_head.weight" in state["model"] and not any(k.startswith("cls.") for k in state["model"])


def test_killed_mid_run_resumes_bit_equal(setup, reference, tmp_path):
    """SIGKILLed halfway through its 8th save (mid-epoch 1): resumed from the step-7 checkpoint, the run ends with
    the weights, optimizer state, log and held-out evaluations of the uninterrupted one (dropout and samples too)."""
    save = tmp_path / "cut.pth"
    extra = ["--eval_input", setup["held_out"], "--eval_steps", "5"]
    p = subprocess.run(
        [sys.executable, "pretrain.py", *args_for(setup, save, *extra)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "BERT_KILL_IN_SAVE": "8"},
        check=False,
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert torch.load(save, weights_only=True)["step"] == 7
    pretrain.main(args_for(setup, save, *extra))
    assert_same_state(save, reference)
    for name in ("log.csv", "eval.csv"):
        a, b = read_log(f"{save}.log/{name}"), read_log(f"{reference}.log/{name}")
        drop = {"tokens_per_s", "elapsed_s"}
        assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
            {k: v for k, v in r.items() if k not in drop} for r in b
        ]


def test_resume_with_the_other_objective_is_refused(setup, reference, tmp_path):
    mlm = tmp_path / "mlm.pth"
    pretrain.main(args_for(setup, mlm, "--max_steps", "1")[2:])  # without --objective electra: masked LM
    with pytest.raises(UserError, match=r"mlm\.pth was pretrained with --objective mlm; resume with the same"):
        pretrain.main(args_for(setup, mlm))
    with pytest.raises(UserError, match=r"--objective electra and a generator of hidden size 8"):
        pretrain.main(args_for(setup, reference, "--gen_hidden_ratio", "0.5"))
    with pytest.raises(UserError, match=r"--gen_hidden_ratio must be in \(0, 1\]"):
        pretrain.main(args_for(setup, tmp_path / "x.pth", "--gen_hidden_ratio", "0"))
    # the masked-LM checkpoint's encoder starts an electra run (--lr 0 keeps it); its NSP/MLM heads stay behind
    start = tmp_path / "from_mlm.pth"
    pretrain.main(args_for(setup, start, "--pretrain", str(mlm), "--max_steps", "1", "--lr", "0"))
    a, b = torch.load(mlm, weights_only=True)["model"], torch.load(start, weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items() if k.startswith("bert."))


def test_nan_loss_is_skipped(setup, tmp_path, monkeypatch, capsys):
    forward, calls = ElectraForPreTraining.forward, [0]

    def nan_third(self, *a, **k):
        calls[0] += 1
        gen, disc, replaced = forward(self, *a, **k)
        return (gen * float("nan"), disc, replaced) if calls[0] == 3 else (gen, disc, replaced)

    monkeypatch.setattr(ElectraForPreTraining, "forward", nan_third)
    save = tmp_path / "nan.pth"
    pretrain.main(args_for(setup, save, "--epoch", "1"))
    assert "step 3: NaN/inf loss, step skipped (1 in a row)" in capsys.readouterr().err
    state = torch.load(save, weights_only=True)
    assert state["step"] == 12 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_train_py_fine_tunes_the_discriminator(setup, reference, tmp_path, capsys):
    """train.py --pretrain on an electra checkpoint: with --lr 0 the saved encoder is the discriminator's, exactly."""
    save = tmp_path / "best.pth"
    train.main(
        [
            "--pretrain",
            str(reference),
            "--config",
            setup["config"],
            "--vocab",
            setup["vocab"],
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
    )
    assert f"fine-tuning from {reference} (24 pretraining steps)" in capsys.readouterr().out
    saved, want = torch.load(save, weights_only=True)["model"], torch.load(reference, weights_only=True)["model"]
    encoder = [k for k in want if k.startswith("bert.")]
    assert len(encoder) == len([k for k in saved if k.startswith("bert.")]) > 0
    assert all(torch.equal(saved[k], want[k]) for k in encoder)


def test_export_writes_the_encoder(setup, reference, tmp_path):
    out = tmp_path / "hf"
    export.main(["--pretrain", str(reference), "--vocab", setup["vocab"], "--output", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert "last_hidden_state" in (out / "README.md").read_text()
    back, want = load_checkpoint(str(out))["model"], torch.load(reference, weights_only=True)["model"]
    assert sorted(back) == sorted(k for k in want if k.startswith("bert."))
    assert all(torch.equal(v, want[k]) for k, v in back.items())
    transformers = pytest.importorskip("transformers")
    hf, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    torch.testing.assert_close(hf.embeddings.word_embeddings.weight, want["bert.embeddings.word_embeddings.weight"])


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
def test_two_processes_match_one(setup):
    """torchrun, 2 CPU processes (gloo) with batch 2 against 1 with batch 4, dropout off. The generator's samples
    differ per process, so only the generator can be compared: --disc_weight 0 leaves it alone to train."""
    d, config0 = setup["dir"], micro0_config(setup)

    def args(name, b):
        return [
            *args_for(setup, d / f"{name}.pth", "--config", config0, "--disc_weight", "0"),
            "--batch",
            b,
        ]

    out = torchrun("pretrain.py", args("two", "2"))
    assert "effective batch 4 (2 x 1 micro-batches x 2 processes)" in out
    pretrain.main(args("one", "4"))
    two, one = read_log(d / "two.pth.log" / "log.csv"), read_log(d / "one.pth.log" / "log.csv")
    assert [r["step"] for r in two] == [r["step"] for r in one] and len(one) == 24
    for col in ("gen_loss", "gen_acc"):
        assert [float(r[col]) for r in two] == pytest.approx([float(r[col]) for r in one], rel=1e-5), col
    a, b = torch.load(d / "two.pth", weights_only=True)["model"], torch.load(d / "one.pth", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_micro_batches_match_one_batch(setup, monkeypatch):
    """--grad_accum 2 of 2 instances (cut from each step sorted by length) against batch 4, dropout off, new masks
    every epoch, and the generator's draw made its argmax (random draws differ between the two ways of cutting):
    the same losses step for step and the same weights."""
    d, config0 = setup["dir"], micro0_config(setup)
    monkeypatch.setattr(model_py, "sample_tokens", lambda logits, generator=None: logits.detach().argmax(-1))

    def run(name, *extra):
        pretrain.main(args_for(setup, d / f"{name}.pth", "--config", config0, "--dynamic_mask", *extra))
        return read_log(d / f"{name}.pth.log" / "log.csv"), torch.load(d / f"{name}.pth", weights_only=True)["model"]

    (one, a), (accum, b) = run("batch4"), run("accum2", "--batch", "2", "--grad_accum", "2")
    assert [r["step"] for r in accum] == [r["step"] for r in one] and len(one) == 24
    for col in ("gen_loss", "gen_acc", "disc_loss", "disc_acc"):
        assert [float(r[col]) for r in accum] == pytest.approx([float(r[col]) for r in one], rel=1e-5), col
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
