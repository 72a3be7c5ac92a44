"""predict.py: the length-sorted, streamed, token-batched path gives the plain path's labels in the input's order;
bf16 only on CPUs that have it in hardware."""

import copy
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE

import predict
import training
from checkpoint import save_checkpoint
from errors import UserError
from model import BertConfig, BertForSequenceClassification
from nsmc import read_nsmc
from vocab import CLS_ID, SEP_ID

CFG = {
    "vocab_size": 1007,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
    "initializer_range": 0.2,  # large random weights: labels vary from review to review
}
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}  # a Zen 3: no AVX-512, no AMX
AMX = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"}


@pytest.fixture(scope="module")
def reviews():
    return read_nsmc(os.path.join(SAMPLE, "ratings_test.txt"))[0][:300]


@pytest.fixture(scope="module")
def classifier(sample_spm, reviews):
    """Random weights, the classifier's bias set so that about half the reviews come out positive."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**CFG)).eval()
    with torch.no_grad():
        x = [torch.tensor([CLS_ID] + ids[:46] + [SEP_ID]) for ids in predict.load_vocab(sample_spm).encode(reviews)]
        logits = torch.cat([model(t[None]) for t in x])
        # between the two middle reviews, so that no review sits on the decision boundary where rounding alone
        # (batching, the [CLS]-only last layer) would pick its label
        d = (logits[:, 1] - logits[:, 0]).sort().values
        model.classifier.bias[1] -= (d[len(d) // 2 - 1] + d[len(d) // 2]) / 2
        assert (d[len(d) // 2] - d[len(d) // 2 - 1]) / 2 > 1e-4
    return model


def one_at_a_time(model, sp, reviews, n_seq):
    """The plain path: each review alone, unpadded, in the input's order."""
    out = []
    with torch.no_grad():
        for ids in sp.encode(reviews):
            x = torch.tensor([[CLS_ID] + ids[: n_seq - 2] + [SEP_ID]])
            p, label = model(x, attention_mask=torch.ones_like(x)).softmax(-1).max(-1)
            out.append((label.item(), p.item()))
    return out


@pytest.mark.parametrize("multiple", [1, 16])  # padded to each batch's longest (fp32 on a CPU), or to 16s
def test_sorted_batches_give_the_plain_labels_in_input_order(classifier, sample_spm, reviews, multiple, monkeypatch):
    sp = predict.load_vocab(sample_spm)
    plain = one_at_a_time(classifier, sp, reviews, 48)
    labels = [label for label, _ in plain]
    assert 0.1 < np.mean(labels) < 0.9, "the test needs both labels"
    assert predict.pad_multiple(torch.device("cpu"), "fp32") == 1
    monkeypatch.setattr(predict, "pad_multiple", lambda device, precision: multiple)
    for window, batch_tokens, n in ((1000, 2048, 300), (37, 160, 300), (1, 16, 30)):
        fast = predict.predict(classifier, sp, reviews[:n], 48, batch_tokens=batch_tokens, window=window)
        assert [label for label, _ in fast] == labels[:n], (window, batch_tokens)
        np.testing.assert_allclose([p for _, p in fast], [p for _, p in plain[:n]], atol=1e-5)


def test_token_batches_cover_every_review_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(3, 129, size=3000)
    for multiple in (16, 1):
        batches = list(predict.token_batches(lengths, 2048, multiple))
        assert sorted(np.concatenate(batches).tolist()) == list(range(3000))
        for b in batches:
            T = -(-lengths[b].max() // multiple) * multiple
            assert len(b) * T <= 2048 and lengths[b].max() - lengths[b].min() <= 16
    assert [len(b) for b in predict.token_batches(np.array([200, 5]), 16)] == [1, 1]  # at least one review


def test_stream_reads_lazily(classifier, sample_spm, reviews):
    """The first results come after one window is read, not the whole input: constant memory for any length."""
    sp = predict.load_vocab(sample_spm)
    taken = 0

    def endless():
        nonlocal taken
        for r in itertools.cycle(reviews):
            taken += 1
            yield r

    stream = predict.predict_stream(classifier, sp, endless(), 48, window=50)
    first = list(itertools.islice(stream, 120))
    assert len(first) == 120 and taken <= 150  # three windows read for 120 results
    assert [label for label, _ in first] == [label for label, _ in predict.predict(classifier, sp, reviews[:120], 48)]


def test_main_streams_a_file_in_order(classifier, sample_spm, reviews, tmp_path, capsys, monkeypatch):
    save = tmp_path / "c.pth"
    save_checkpoint(str(save), {"model": classifier.state_dict(), "config": classifier.config.to_dict(), "n_seq": 48})
    f = tmp_path / "r.txt"
    f.write_text("\n".join(reviews) + "\n", encoding="utf-8")
    monkeypatch.setattr(training, "cpu_flags", lambda: AVX2_ONLY)  # fp32, so labels match the plain path exactly
    kept = []  # glibc told to keep freed pages (on a CPU), recorded rather than done to the test process
    monkeypatch.setattr(predict, "keep_freed_memory", lambda: kept.append(True))
    predict.main(["--save", str(save), "--vocab", sample_spm, "--input", str(f), "--window", "64", "첫 리뷰"])
    assert kept == [True]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t", 2)[2] for line in lines] == ["첫 리뷰", *reviews]
    plain = one_at_a_time(classifier, predict.load_vocab(sample_spm), ["첫 리뷰", *reviews], 48)
    assert [line.split("\t")[0] for line in lines] == [predict.LABELS[label] for label, _ in plain]


@pytest.mark.parametrize("native_bf16", [False, True])  # packed by oneDNN (an AVX2 CPU) or torch's default engine
def test_int8_quantizes_the_encoders_linears_and_keeps_the_labels(
    classifier, sample_spm, reviews, native_bf16, monkeypatch
):
    sp = predict.load_vocab(sample_spm)
    fp32 = predict.predict(classifier, sp, reviews, 48)
    monkeypatch.setattr(predict, "cpu_has_bf16", lambda: native_bf16)
    int8 = predict.quantize_int8(copy.deepcopy(classifier))
    projections = ("query", "key", "value", "dense")  # the six Linear layers of each encoder layer
    encoder_linears = [m for n, m in int8.bert.encoder.named_modules() if n.rsplit(".", 1)[-1] in projections]
    assert len(encoder_linears) == 6 * CFG["num_hidden_layers"]
    # each one replaced by its int8 version (packed int8 weights)
    assert all(type(m) is not torch.nn.Linear and hasattr(m, "_packed_params") for m in encoder_linears)
    assert type(int8.bert.pooler.dense) is torch.nn.Linear and type(int8.classifier) is torch.nn.Linear
    got = predict.predict(int8, sp, reviews, 48)
    p_fp32, p_int8 = ([p if label else 1 - p for label, p in out] for out in (fp32, got))  # P(positive)
    diff = np.abs(np.array(p_int8) - np.array(p_fp32))
    agree = np.mean([a == b for (a, _), (b, _) in zip(fp32, got)])
    # int8 rounding moves every probability a little, and labels only of reviews near the boundary (these large
    # random weights are harder on int8 than trained ones: 49,933 of the 50,000 NSMC test labels agreed for one)
    assert 0 < diff.mean() < 0.02 and diff.max() < 0.15 and agree >= 0.93, (diff.mean(), diff.max(), agree)


def test_int8_packs_with_onednn_without_native_bf16_and_leaves_the_engine_as_it_was(classifier, monkeypatch):
    import torch.ao.quantization as tq

    engines, quantize = [], tq.quantize_dynamic

    def recording(*args, **kw):  # the engine in force while the weights are packed
        engines.append(torch.backends.quantized.engine)
        return quantize(*args, **kw)

    monkeypatch.setattr(tq, "quantize_dynamic", recording)
    before = torch.backends.quantized.engine
    for native_bf16 in (False, True):
        monkeypatch.setattr(predict, "cpu_has_bf16", lambda native_bf16=native_bf16: native_bf16)
        predict.quantize_int8(copy.deepcopy(classifier))
        assert torch.backends.quantized.engine == before
    has_onednn = "onednn" in torch.backends.quantized.supported_engines
    assert engines == ["onednn" if has_onednn else before, before]  # an AVX2 CPU; one with bf16 (VNNI or AMX)


def test_int8_cli_classifies_and_refuses_a_gpu(classifier, sample_spm, tmp_path, capsys):
    save = tmp_path / "c.pth"
    save_checkpoint(str(save), {"model": classifier.state_dict(), "config": classifier.config.to_dict(), "n_seq": 48})
    predict.main(["--save", str(save), "--vocab", sample_spm, "--int8", "정말 재밌어요", "최악"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == ["정말 재밌어요", "최악"]
    assert all(line.split("\t")[0] in predict.LABELS for line in lines)
    with pytest.raises(UserError, match="--int8 is for the CPU"):
        predict.main(["--save", str(save), "--vocab", sample_spm, "--int8", "--gpu", "0", "최악"])


def test_bf16_only_where_the_cpu_has_it(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    assert not training.cpu_has_bf16(AVX2_ONLY)
    assert not training.cpu_has_bf16(AVX2_ONLY | {"avx512f", "avx512bw"})  # AVX-512 without BF16: emulated too
    monkeypatch.setattr(training, "cpu_flags", lambda: AVX2_ONLY)
    assert training.mixed_precision(cpu)[2] == "fp32"
    assert predict.DTYPES[training.mixed_precision(cpu)[2]] == torch.float32
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # oneDNN says yes on this machine, the flags still say no
        assert training.cpu_has_bf16(AMX)
        monkeypatch.setattr(training, "cpu_flags", lambda: AMX)
        assert training.mixed_precision(cpu)[2] == "bf16"
        assert training.mixed_precision(cpu, fp32=True)[2] == "fp32"
    monkeypatch.undo()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n\n")
    assert training.cpu_flags(str(info)) == {"fpu", "avx", "avx2", "fma"}
    assert training.cpu_model(str(info)) == "AMD EPYC 7B13"
    assert training.matrix_isa({"avx2"}) == "AVX2" and training.matrix_isa(AMX) == "AMX"
    assert training.matrix_isa(AVX2_ONLY | {"avx512f"}) == "AVX-512"
    assert training.matrix_isa(AVX2_ONLY | {"avx512f", "avx512_bf16"}) == "AVX-512 BF16"  # a Zen 4 or Zen 5
    assert training.cpu_flags(str(tmp_path / "missing")) == set() and not training.cpu_has_bf16(set())
    info.write_text("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\n")
    assert training.cpu_model(str(info)) == "AMD EPYC (family 26, model 2)"


def test_kernels_capped_at_avx2_run_fp32():
    """An AVX-512 or AMX machine run with oneDNN held to AVX2 (as an AVX2-only CPU) must not pick bf16, which
    oneDNN would then emulate; bench.py's machine line names the caps."""
    code = (
        "import torch, training; from bench import describe_machine; "
        "print(training.mixed_precision(torch.device('cpu'))[2]); print(describe_machine(torch.device('cpu')))"
    )
    caps = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    env = {**os.environ, **caps}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    precision, machine = p.stdout.splitlines()
    assert precision == "fp32"
    assert "(kernels capped: oneDNN AVX2, ATen avx2, fbgemm AVX2), bf16 not native: fp32" in machine


def test_a_line_of_another_encoding_deep_in_the_input_is_one_line(tmp_path):
    """The first 64 KB are checked before the model loads; a bad line after that stops the stream with its number."""
    path = tmp_path / "late.txt"
    path.write_bytes("좋다\n".encode() * 30000 + "별로\n".encode("euc-kr"))
    with pytest.raises(UserError, match=r"late\.txt is not a UTF-8 text file of reviews, one a line \(line 30001 "):
        for _ in predict.read_lines(str(path)):
            pass
