import numpy as np
import pytest

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
