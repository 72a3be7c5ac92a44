"""model.py's training speed paths (model.FAST) against the plain path: same math, real dropout."""

import math
import re

import pytest
import torch
from conftest import CFG

import bench
import model
from errors import UserError
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, dropout


def no_dropout(x, p, training=True, residual=None):
    """model.dropout with its randomness taken out (the identity), fused residual sum included."""
    return x if residual is None else residual + x


def batch(B=3, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 301, (B, T), generator=g)
    mask = (torch.arange(T) < torch.tensor([T, T - 6, 5] * B)[:B, None]).long()
    types = (torch.arange(T) >= T // 2).long().expand(B, T) * mask
    return ids * mask, types, mask


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_statistics(p, dtype):
    torch.manual_seed(0)
    n = 1 << 20
    y = dropout(torch.ones(n, dtype=dtype), p).float()
    assert y.dtype == torch.float32 and dropout(torch.ones(4, dtype=dtype), p).dtype == dtype
    kept = y != 0
    share = 1 - kept.float().mean().item()
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)  # within 5 sigma of p
    scale = y[kept].unique()
    assert len(scale) == 1 and abs(scale.item() - 1 / (1 - p)) < 1e-4 + (1e-2 if dtype == torch.bfloat16 else 0)
    if dtype == torch.float32:
        assert abs(y.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / n)  # the expectation is kept
    # neighbours are independent (4 elements share one 64-bit random word): P(both dropped) = p^2
    d = ~kept
    both = (d[:-1] & d[1:]).float().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p / n) + 1e-3
    # masks differ from call to call
    assert not torch.equal(dropout(torch.ones(1000), p), dropout(torch.ones(1000), p))


def test_dropout_gradient_and_eval():
    torch.manual_seed(0)
    x = torch.randn(4, 50, 16, requires_grad=True)
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    mask = (y != 0).float()
    torch.testing.assert_close(x.grad, mask * (65536 / (65536 - round(0.3 * 65536))))
    torch.testing.assert_close(y, x.detach() * x.grad)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert (dropout(x, 1.0) == 0).all()
    m = model.Dropout(0.3).eval()
    assert m(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_with_residual_is_the_sum(dtype):
    """dropout(x, p, residual=r), the fused sum before each LayerNorm: r + x * mask / (1 - p), the mask drawn as
    dropout(x, p) draws it (same seed, same mask), and the gradients of both inputs."""
    x = torch.randn(8, 30, 16).to(dtype).requires_grad_()
    r = torch.randn(8, 30, 16).to(dtype).requires_grad_()
    torch.manual_seed(1)
    alone = dropout(x, 0.25)
    torch.manual_seed(1)
    y = dropout(x, 0.25, residual=r)
    assert y.dtype == dtype
    kept = alone != 0
    assert 0.15 < 1 - kept.float().mean() < 0.35
    scale = 65536 / (65536 - round(0.25 * 65536))
    want = r.detach().float() + x.detach().float() * kept * scale
    tol = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}  # bf16: rounded once
    torch.testing.assert_close(y.float(), want, **tol)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(r.grad.float(), torch.ones(8, 30, 16))
    torch.testing.assert_close(x.grad.float(), kept.float() * scale, **tol)
    torch.manual_seed(2)
    assert torch.equal(dropout(x, 0.25, training=False, residual=r), r + x)
    assert torch.equal(dropout(x, 0.0, residual=r), r + x)
    assert torch.equal(dropout(x, 1.0, residual=r), r + x * 0.0)


def test_dropout_masks_follow_torch_seed_and_generator():
    """The masks come from numpy's SFC64 seeded by one draw of torch's generator: torch.manual_seed (and a
    checkpoint's RNG state) repeats them, a thread's own generator (training.side_by_side) decides its own."""
    torch.manual_seed(3)
    a = dropout(torch.ones(5000), 0.1)
    b = dropout(torch.ones(5000), 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(torch.ones(5000), 0.1)) and torch.equal(b, dropout(torch.ones(5000), 0.1))
    assert not torch.equal(a, b)
    state = torch.get_rng_state()
    with model.thread_generator(torch.Generator().manual_seed(7)):
        c = dropout(torch.ones(5000), 0.1)
    with model.thread_generator(torch.Generator().manual_seed(7)):
        assert torch.equal(c, dropout(torch.ones(5000), 0.1))
    assert torch.equal(torch.get_rng_state(), state)  # the thread's generator drew, not torch's default one
    words = model.random_int16(1 << 20).float()
    assert abs(words.mean().item() + 0.5) < 5 * 18918 / 1024 and words.min() == -32768 and words.max() == 32767


def test_dropout_traces_under_torch_compile_with_dynamic_shapes():
    """`bench.py --compile` on a CPU: a dynamic-shape trace cannot size torch.randint's words (it failed with
    "SymIntArrayRef expected to contain only concrete integers"), so compiled code takes F.dropout, which inductor
    fuses. The eager backend traces as inductor does, without its C++ compile."""
    torch.manual_seed(0)
    f = torch.compile(lambda x: dropout(x, 0.5), backend="eager", dynamic=True)
    for n in (64, 96):  # a second length, so the trace is the dynamic one
        y = f(torch.ones(n, 8))
        assert set(y.unique().tolist()) <= {0.0, 2.0} and 0.3 < (y == 0).float().mean() < 0.7


@pytest.mark.parametrize("p", [0.1, 0.0])
def test_fast_training_path_is_the_plain_math(monkeypatch, p):
    """Training mode without dropout randomness: fused QKV + manual attention (with padding) + the last layer at
    [CLS] and the masked positions only == the plain path, outputs and grads. The CPU takes the manual attention
    with dropout 0 too (a config without dropout, as for pretraining without it): SDPA is not called."""
    torch.manual_seed(0)
    config = BertConfig(**{**CFG, "hidden_dropout_prob": p, "attention_probs_dropout_prob": p})
    net = BertForPreTraining(config)
    ids, types, mask = batch()
    pos = torch.tensor([[1, 4], [2, 3], [1, 0]])  # a pad slot points at [CLS], as collate_pretrain's do
    shapes = []
    net.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, a, out: shapes.append(out.shape[1]))

    def run(fast):
        monkeypatch.setattr(model, "FAST", fast)
        net.zero_grad()
        mlm, nsp = net(ids, types, mask, pos)
        (mlm.square().mean() + nsp.square().mean()).backward()
        return [mlm, nsp] + [p.grad.clone() for p in net.parameters()]

    net.eval()  # plain path, no dropout: Hugging Face's computation
    plain = run(False)
    net.train()
    monkeypatch.setattr(model, "dropout", no_dropout)  # dropout off, every fast path on
    sdpa = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(model.F, "scaled_dot_product_attention", lambda *a, **k: sdpa.append(1) or real_sdpa(*a, **k))
    fast = run(True)
    assert sdpa == []
    assert shapes == [ids.size(1), 1 + pos.size(1)]  # the last layer's FFN: all T positions, then [CLS] + P
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_electra_generator_training_path_is_the_plain_math(monkeypatch):
    """ELECTRA's generator computes its last layer at the masked positions only in training: the same logits,
    samples and gradients as the plain path."""
    torch.manual_seed(0)
    config = BertConfig(**CFG)
    net = model.ElectraForPreTraining(config, model.generator_config(config))
    ids, types, mask = batch()
    pos = torch.tensor([[1, 4], [2, 3], [1, 0]])
    label = torch.tensor([[9, 10], [11, 12], [13, -100]])
    shapes = []
    net.generator.encoder.layer[-1].intermediate.register_forward_hook(lambda m, a, out: shapes.append(out.shape[1]))

    def run(fast):
        monkeypatch.setattr(model, "FAST", fast)
        net.zero_grad()
        gen, disc, replaced = net(ids, types, mask, pos, label, torch.Generator().manual_seed(1))
        (gen.square().mean() + disc.square().mean()).backward()
        return [gen, disc, replaced] + [p.grad.clone() for p in net.parameters() if p.grad is not None]

    net.eval()
    plain = run(False)
    net.train()
    monkeypatch.setattr(model, "dropout", no_dropout)
    fast = run(True)
    assert shapes == [ids.size(1), pos.size(1)]
    assert len(fast) == len(plain)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["manual", "sdpa"])
def test_classifier_training_path_is_the_plain_math(monkeypatch, kind):
    """A classifier in training computes its last layer at [CLS] only and the layers below on the real tokens only
    (CPU and CUDA attention branches): the logits and every gradient equal the plain full computation's, and the
    last layer really is cut to one position, the others to the real tokens."""
    torch.manual_seed(0)
    # our dropout is taken out below; SDPA's dropout_p must be 0 for the same math
    off = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if kind == "sdpa" else {}
    net = BertForSequenceClassification(BertConfig(**{**CFG, **off}))
    ids, types, mask = batch()
    labels = torch.tensor([0, 1, 1])
    shapes, first = [], []
    net.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, a, out: shapes.append(out.shape[1]))
    net.bert.encoder.layer[0].intermediate.register_forward_hook(lambda m, a, out: first.append(out.shape[:-1]))

    def run():
        net.zero_grad()
        logits = net(ids, types, mask)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return [logits] + [p.grad.clone() for p in net.parameters()]

    net.eval()  # plain path, no dropout: Hugging Face's computation at every position
    plain = run()
    net.train()
    monkeypatch.setattr(model, "dropout", no_dropout)  # dropout off, every fast path on
    monkeypatch.setattr(model, "attention_kind", lambda d, t: kind if t else "plain")
    monkeypatch.setattr(model, "PACK_ROWS", 8)  # the 39 real tokens packed with 1 padding position
    fast = run()
    assert shapes == [ids.size(1), 1]  # the last layer's FFN ran on all T positions in eval mode, on [CLS] in training
    # the layers below ran on the real tokens only in training (Encoder's packing), on every position in eval mode
    assert mask.sum() == 39 and first == [ids.shape, (40,)]
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [20, 32])
def test_fast_path_under_bf16_autocast_is_close(monkeypatch, T):
    """The bf16 residual stream keeps the outputs within bf16 rounding of the plain path's; the attention's softmax
    in fp32 (T 20: rows not a multiple of 32) or in bf16 (T 32)."""
    torch.manual_seed(0)
    net = BertForPreTraining(BertConfig(**CFG))
    ids, types, mask = batch(T=T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net.eval()
        plain, _ = net(ids, types, mask)
        net.train()
        monkeypatch.setattr(model, "dropout", no_dropout)
        fast, _ = net(ids, types, mask)
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - plain.float()).abs().max() < 0.05 * plain.float().abs().max()


def test_packing_under_bf16_autocast_is_close(monkeypatch):
    """A classifier's bf16 training step on the CPU runs its layers on the real tokens only, as in fp32: the logits
    and every gradient within bf16 rounding of the plain fp32 computation's."""
    torch.manual_seed(0)
    net = BertForSequenceClassification(BertConfig(**CFG))
    ids, types, mask = batch()
    labels = torch.tensor([0, 1, 1])
    first = []
    net.bert.encoder.layer[0].intermediate.register_forward_hook(lambda m, a, out: first.append(out.shape[:-1]))

    def run():
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=net.training):
            logits = net(ids, types, mask).float()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return [logits] + [p.grad.clone() for p in net.parameters()]

    net.eval()
    plain = run()  # fp32, Hugging Face's computation at every position
    net.train()
    monkeypatch.setattr(model, "dropout", no_dropout)
    monkeypatch.setattr(model, "PACK_ROWS", 8)  # the 39 real tokens packed with 1 padding position
    fast = run()
    assert first == [ids.shape, (40,)]  # eval mode: every position; bf16 training: packed
    for a, b in zip(fast, plain):
        assert (a - b).norm() <= 0.04 * b.norm() + 1e-6  # 1e-6: the key biases' gradients are 0 in exact math


def test_fast_and_plain_train_alike():
    """Twenty steps with dropout on: both paths lower the loss about as much."""
    ids, types, mask = batch(B=8, T=16)
    pos = torch.randint(1, 5, (8, 3), generator=torch.Generator().manual_seed(1))
    labels = ids.gather(1, pos)
    final = {}
    for fast in (False, True):
        model.FAST = fast
        try:
            torch.manual_seed(0)
            net = BertForPreTraining(BertConfig(**CFG)).train()
            opt = model.configure_optimizer(net, 3e-3)
            for _ in range(20):
                mlm, _ = net(ids, types, mask, pos)
                loss = torch.nn.functional.cross_entropy(mlm.flatten(0, 1), labels.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
            final[fast] = loss.item()
        finally:
            model.FAST = True
    assert final[True] < 0.5 * math.log(301) and final[False] < 0.5 * math.log(301)


def test_bench_runs(tmp_path, capsys):
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    cfg = tmp_path / "tiny.json"
    cfg.write_text(
        '{"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, '
        '"max_position_embeddings": 64}'
    )
    bench.main(
        [
            "--config",
            str(cfg),
            "--seq",
            "64",
            "--batch",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--work",
            str(tmp_path / "w"),
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("machine: ") and "matrix ISA" in out[0]
    assert any(line.startswith("pretrain         ours:") and "MFU" in line for line in out)
    assert out[-1].startswith("speedup vs transformers: ") and "tok/s" in out[-1]
    bench.main(
        [
            "--task",
            "predict",
            "--config",
            str(cfg),
            "--predict_reviews",
            "40",
            "--rounds",
            "1",
            "--work",
            str(tmp_path / "w"),
            "--plain",
            "--threads",
            str(threads + 1),
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("predict: ours ") and "x before" in out[-1] and "x transformers" in out[-1]
    assert model.FAST and torch.get_num_threads() == threads  # --plain and --threads last only as long as main()
    work = str(tmp_path / "w")
    bench.main(
        ["--task", "finetune", "--config", str(cfg), "--steps", "3", "--warmup", "1", "--work", work, "--profile", "2"]
    )
    out = capsys.readouterr().out
    assert "; ours in parts of at most 2,048 padded tokens, as train.py" in out  # train.py's CPU --batch_tokens
    epoch = [line for line in out.splitlines() if "one NSMC epoch" in line]
    assert len(epoch) == 2 and all("min at the mean step time" in line for line in epoch)  # ours, transformers
    assert "finetune ours, 2 steps under torch.profiler" in out and "aten::" in out and "Self CPU" in out
    # the MFU counts the real tokens, fewer than the padded ones (bench.py's batches pad to a multiple of 16)
    real, padded = map(int, re.search(r"finetune: (\d+) real tokens per review of (\d+) padded", out).groups())
    assert 0 < real < padded
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            bench.main(["--gpu", "0", "--config", str(cfg)])


def test_matmul_peak_is_the_best_window(monkeypatch):
    """bench.py's matmul peak is the best of its timed windows, each long enough to time (a window under
    window_s doubles its matmuls): one slow patch of a VM must not lower it (a long average once put an MFU at
    136%)."""
    ticks = iter([0.0, 0.05, 1.0, 1.4, 2.0, 2.2, 3.0, 3.8, 4.0, 4.4, 5.0, 5.4])  # 1 matmul in 0.05 s, then 2 in ...
    monkeypatch.setattr(bench.time, "perf_counter", ticks.__next__)
    monkeypatch.setattr(bench.time, "thread_time", ticks.__next__)
    monkeypatch.setattr(bench, "_peaks", {})
    peak = bench.matmul_peak(torch.device("cpu"), "fp32", n=64, windows=5, window_s=0.1)
    assert peak == pytest.approx(2 * 64**3 * 2 / 0.2)  # 2 matmuls in 0.2 s: the best of 0.4, 0.2, 0.8, 0.4, 0.4 s
    assert next(ticks, None) is None  # five windows timed, the short one not among them


def test_device_type_picks_the_path():
    """CUDA training takes SDPA with dropout_p and F.dropout; CPU training our manual attention and cheap masks;
    eval mode the plain path everywhere."""
    assert model.attention_kind("cuda", True) == "sdpa" and not model.cheap_dropout("cuda")
    assert model.attention_kind("cpu", True) == "manual" and model.cheap_dropout("cpu")
    assert model.attention_kind("cuda", False) == model.attention_kind("cpu", False) == "plain"
    assert model.configure_optimizer(torch.nn.Linear(2, 2), 1e-3, device_type="cuda").defaults["fused"]


def test_forward_dispatches_on_the_tensors_device(monkeypatch):
    seen = []
    real = model.attention_kind
    monkeypatch.setattr(model, "attention_kind", lambda d, t: seen.append((d, t)) or real(d, t))
    net = BertForPreTraining(BertConfig(**CFG))
    ids, types, mask = batch()
    net.train()(ids, types, mask)
    net.eval()(ids, types, mask)
    assert set(seen) == {("cpu", True), ("cpu", False)} and len(seen) == 2 * CFG["num_hidden_layers"]


def test_cuda_training_path_is_the_plain_math(monkeypatch):
    """The branch CUDA training takes (fused QKV, SDPA with dropout_p), run on the CPU with dropout 0."""
    torch.manual_seed(0)
    net = BertForPreTraining(BertConfig(**CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, types, mask = batch()
    plain = net.eval()(ids, types, mask)
    monkeypatch.setattr(model, "attention_kind", lambda d, t: "sdpa" if t else "plain")
    taken = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        model.F, "scaled_dot_product_attention", lambda *a, **k: taken.append(k["dropout_p"]) or real_sdpa(*a, **k)
    )
    fast = net.train()(ids, types, mask)
    assert taken == [0.0] * CFG["num_hidden_layers"]
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


KEEP = r"""
import ctypes, sys, torch
sys.path.insert(0, sys.argv[1])
import training
libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):  # glibc's struct mallinfo2; fordblks: free bytes held in the heap
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(f, ctypes.c_size_t) for f in names.split()]
libc.mallinfo2.restype = Mallinfo2
kept = training.keep_freed_memory() if sys.argv[2] == "keep" else None
x = torch.ones(4 << 20)  # 16 MB, touched
del x
print(kept, libc.mallinfo2().fordblks >> 20)  # True/None, MB free in the heap: the freed tensor's pages, if kept
"""


def test_keep_freed_memory_keeps_a_freed_tensors_pages(tmp_path):
    import ctypes.util
    import os
    import subprocess
    import sys

    if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "") or not ctypes.util.find_library("c"):
        pytest.skip("glibc's mallopt only")
    script = tmp_path / "keep.py"
    script.write_text(KEEP)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda how: subprocess.run([sys.executable, script, root, how], capture_output=True, text=True, check=True)
    kept, free_mb = run("keep").stdout.split()
    assert kept == "True" and int(free_mb) >= 16  # from the heap, and kept there for the next step
    kept, free_mb = run("default").stdout.split()
    assert int(free_mb) < 16  # glibc's default: mapped on its own and unmapped when freed


def test_pretrain_keeps_freed_memory_on_the_cpu(monkeypatch, tmp_path):
    import pretrain

    def stop(path):  # the first thing main does after set-up
        raise SystemExit("stop after set-up")

    calls = []
    monkeypatch.setattr(pretrain, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(pretrain, "load_vocab", stop)
    with pytest.raises(SystemExit, match="stop after set-up"):
        pretrain.main(["--save", str(tmp_path / "p.pth")])
    assert calls == [1]
