import json

import numpy as np
import pytest
from conftest import MICRO, nsmc_head

from errors import UserError
from nsmc import collate_reviews, length_batches, read_nsmc


def test_read_nsmc_keeps_empty_reviews_and_checks_the_header(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text('id\tdocument\tlabel\n1\t\t0\n2\t"따옴표" 영화\t1\n3\tNaN\t0\n', encoding="utf-8")
    reviews, labels = read_nsmc(str(f))
    assert reviews == ["", '"따옴표" 영화', "NaN"] and labels == [0, 1, 0]
    f.write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(UserError, match="expected the header"):
        read_nsmc(str(f))


def test_length_batches_cover_every_review_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 130, size=5000)
    batches = length_batches(lengths, 64, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(5000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean(
        [lengths[b].max() - lengths[b].min() for b in np.array_split(rng.permutation(5000), len(batches))]
    )
    assert spread < 0.2 * random_spread
    # a different draw gives a different order
    assert not np.array_equal(flat, np.concatenate(length_batches(lengths, 64, np.random.default_rng(2))))


def test_collate_pads_to_a_multiple_of_16_within_n_seq():
    ids = [np.array([5, 9, 4]), np.array([5, 9, 9, 9, 9, 4])]
    b = collate_reviews(ids, [1, 0], n_seq=128)
    assert b["input_ids"].shape == (2, 16)
    assert b["attention_mask"].sum(1).tolist() == [3, 6] and b["input_ids"][0, 3:].eq(0).all()
    assert b["labels"].tolist() == [1, 0]
    assert collate_reviews([np.arange(5, 55)], n_seq=60)["input_ids"].shape == (1, 60)  # capped at n_seq
    assert collate_reviews([np.arange(5, 25)])["input_ids"].shape == (1, 20)  # no n_seq: the longest review
    assert collate_reviews(ids, n_seq=128, multiple=1)["input_ids"].shape == (2, 6)  # fp32 on a CPU: the longest


def test_pad_multiple_is_1_only_in_fp32_on_a_cpu():
    """Rounding batch lengths up to 16 keeps oneDNN's bf16 kernels (built per shape) and a GPU's few; in fp32 on
    a CPU it was padding only (a quarter more tokens for NSMC reviews)."""
    import torch

    from training import pad_multiple

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pad_multiple(cpu, "fp32") == 1 and pad_multiple(cpu, "bf16") == 16
    assert pad_multiple(cuda, "fp32") == pad_multiple(cuda, "bf16") == pad_multiple(cuda, "fp16") == 16


def test_token_split_keeps_the_step_and_bounds_the_tokens():
    import torch
    import torch.nn.functional as F

    from model import BertConfig, BertForSequenceClassification
    from nsmc import default_batch_tokens, token_split

    rng = np.random.default_rng(0)
    ids = [np.array([5, *rng.integers(7, 301, n), 4]) for n in rng.integers(20, 60, size=24)]
    lengths = np.array([len(x) for x in ids])
    batch = list(range(24))
    parts = token_split(batch, lengths, 256, n_seq=64)
    assert [i for p in parts for i in p] == batch and len(parts) > 1
    assert all(len(p) * collate_reviews([ids[i] for i in p], n_seq=64)["input_ids"].size(1) <= 256 for p in parts)
    assert token_split(batch, lengths, 0) == [batch] and token_split(batch, lengths, 10**6) == [batch]
    assert len(token_split([0], lengths, 1)) == 1  # one review is never cut
    # train.py's default (bench.py's too): parts of 2048 tokens on a CPU, the batch whole on a GPU
    assert default_batch_tokens(torch.device("cpu")) == 2048 and default_batch_tokens(torch.device("cuda")) == 0
    # the gradients of the parts add up to the whole batch's
    torch.manual_seed(0)
    config = BertConfig(vocab_size=301, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    net = BertForSequenceClassification(config).train()
    labels = rng.integers(0, 2, size=24).tolist()
    grads = []
    for split in ([batch], parts):
        net.zero_grad()
        for p in split:
            b = collate_reviews([ids[i] for i in p], [labels[i] for i in p], n_seq=64)
            logits = net(b["input_ids"], attention_mask=b["attention_mask"])
            (F.cross_entropy(logits, b["labels"], reduction="sum") / 24).backward()
        grads.append([q.grad.clone() for q in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_cpu_training_gives_freed_heap_pages_back_every_trim_every_steps(tmp_path, sample_spm, monkeypatch):
    """A whole NSMC epoch's peak RSS went from 1.54 to 1.44 GB with malloc_trim every 50 steps: the heap kept
    the pages of long batches all epoch. Here every 2 steps of 10, besides the calls around each evaluation."""
    import train

    (tmp_path / "micro.json").write_text(json.dumps(MICRO))
    calls = []
    monkeypatch.setattr(train, "release_free_memory", lambda: calls.append(1))
    monkeypatch.setattr(train, "TRIM_EVERY", 2)
    train_file = nsmc_head(tmp_path / "train.txt", 340)
    test_file = nsmc_head(tmp_path / "test.txt", 40, "ratings_test.txt")
    args = ["--config", str(tmp_path / "micro.json"), "--vocab", sample_spm, "--epoch", "1", "--batch", "32",
            "--train", train_file, "--test", test_file, "--valid", "0.06", "--save", str(tmp_path / "ft.pth"),
            "--log_dir", str(tmp_path / "log"), "--fp32"]
    train.main(args)
    assert len(calls) == 10 // 2 + 2 * 2  # 5 in training; before and after each of the 2 evaluations
