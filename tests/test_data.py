import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_CORPUS

import data
from corpus import iter_documents
from vocab import CLS_ID, MASK_ID, N_SPECIAL, SEP_ID, load_vocab

N_SEQ, MASK_PROB, MAX_PRED = 128, 0.15, 19


@pytest.fixture(scope="module")
def sp(sample_spm):
    return load_vocab(sample_spm)


@pytest.fixture(scope="module")
def is_word_start(sp):
    return data.word_starts(sp)


@pytest.fixture(scope="module")
def sample_ids(sp):
    return [data.tokenize_document(doc, sp) for doc in iter_documents(SAMPLE_CORPUS)]


@pytest.fixture(scope="module")
def instances(sample_ids, is_word_start):
    return data.create_training_instances(
        sample_ids, N_SEQ, 1, 0.1, MASK_PROB, MAX_PRED, len(is_word_start), is_word_start, random.Random(1)
    )


def unmasked(inst):
    tokens = list(inst.tokens)
    for pos, label in zip(inst.mask_pos, inst.mask_label):
        tokens[pos] = label
    return tokens


def words(tokens, is_word_start):
    """Positions grouped into words the way data.py should group them."""
    groups = []
    for i, t in enumerate(tokens):
        if t in (CLS_ID, SEP_ID):
            continue
        if is_word_start[t] or tokens[i - 1] in (CLS_ID, SEP_ID):
            groups.append([])
        groups[-1].append(i)
    return groups


def test_layout(instances):
    assert len(instances) > 5000
    for inst in instances:
        tokens, segment = inst.tokens, inst.segment
        assert 5 <= len(tokens) <= N_SEQ and len(segment) == len(tokens)
        seps = [i for i, t in enumerate(tokens) if t == SEP_ID]
        assert tokens[0] == CLS_ID and tokens.count(CLS_ID) == 1
        assert len(seps) == 2 and seps[1] == len(tokens) - 1 and seps[0] >= 2  # A and B non-empty
        assert segment == [0] * (seps[0] + 1) + [1] * (len(tokens) - seps[0] - 1)
        assert inst.is_next in (0, 1)


def test_masked_share_and_positions(instances):
    n_tokens = sum(len(inst.tokens) for inst in instances)
    n_masked = sum(len(inst.mask_pos) for inst in instances)
    assert abs(n_masked / n_tokens - MASK_PROB) < 0.01
    for inst in instances:
        assert 1 <= len(inst.mask_pos) <= MAX_PRED
        assert inst.mask_pos == sorted(set(inst.mask_pos))
        assert len(inst.mask_label) == len(inst.mask_pos)
        assert all(inst.mask_label[k] not in (CLS_ID, SEP_ID) for k in range(len(inst.mask_pos)))


def test_80_10_10(instances):
    counts = {"mask": 0, "random": 0, "same": 0}
    for inst in instances:
        for pos, label in zip(inst.mask_pos, inst.mask_label):
            t = inst.tokens[pos]
            assert t in (MASK_ID, label) or t >= N_SPECIAL  # random replacements are ordinary pieces
            counts["mask" if t == MASK_ID else "same" if t == label else "random"] += 1
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.03
    assert abs(counts["random"] / total - 0.1) < 0.02
    assert abs(counts["same"] / total - 0.1) < 0.02


def test_whole_word_masking(instances, is_word_start):
    multi_piece_masked = 0
    for inst in instances:
        masked = set(inst.mask_pos)
        for word in words(unmasked(inst), is_word_start):
            hit = [i in masked for i in word]
            assert all(hit) or not any(hit), (inst, word)
            if all(hit) and len(word) > 1:
                multi_piece_masked += 1
                # one decision per word: all [MASK] or none
                assert len({inst.tokens[i] == MASK_ID for i in word}) == 1
    assert multi_piece_masked > 1000  # the property was actually exercised


def test_is_next_balance(instances):
    share = sum(inst.is_next for inst in instances) / len(instances)
    assert abs(share - 0.5) < 0.03


def test_labels_and_segments_come_from_the_text(instances, sample_ids):
    # With labels put back, A is consecutive text of one document (possibly trimmed at its ends),
    # and a true-next B continues A's document.
    docs = [" " + " ".join(str(t) for sentence in doc for t in sentence) + " " for doc in sample_ids]
    for inst in instances[:150]:
        tokens = unmasked(inst)
        sep = tokens.index(SEP_ID)
        a = " " + " ".join(map(str, tokens[1:sep])) + " "
        b = " " + " ".join(map(str, tokens[sep + 1 : -1])) + " "
        home = [d for d in docs if a in d]
        assert home, "A is not consecutive text of any document"
        if inst.is_next:
            assert any(b in d for d in home)


def test_truncate_seq_pair():
    rng = random.Random(0)
    trimmed_front = trimmed_back = False
    for _ in range(50):
        a, b = list(range(100)), list(range(100, 130))
        data.truncate_seq_pair(a, b, 50, rng)
        assert len(a) + len(b) == 50 and abs(len(a) - len(b)) <= 1  # longer side trimmed first
        assert a == list(range(a[0], a[0] + len(a))) and b == list(range(b[0], b[0] + len(b)))
        trimmed_front |= a[0] > 0
        trimmed_back |= a[-1] < 99
    assert trimmed_front and trimmed_back
    a, b = [1, 2], [3]
    data.truncate_seq_pair(a, b, 5, rng)
    assert (a, b) == ([1, 2], [3])


def test_long_sentences_are_truncated(is_word_start):
    vocab_size = len(is_word_start)
    rng = random.Random(0)
    docs = [[[rng.randrange(N_SPECIAL, vocab_size) for _ in range(300)] for _ in range(3)] for _ in range(4)]
    instances = data.create_training_instances(docs, 64, 2, 0.0, MASK_PROB, 10, vocab_size, is_word_start, rng)
    assert instances and all(len(inst.tokens) == 64 for inst in instances)


def test_one_sentence_documents_get_a_true_next_half_the_time(is_word_start):
    # Wikipedia has many one-sentence stubs; a true B for them is the sentence's second half.
    rng = random.Random(0)
    docs = [[[rng.randrange(N_SPECIAL, len(is_word_start)) for _ in range(12)]] for _ in range(400)]
    instances = data.create_training_instances(docs, 64, 1, 0.0, MASK_PROB, 10, len(is_word_start), is_word_start, rng)
    assert abs(sum(inst.is_next for inst in instances) / len(instances) - 0.5) < 0.08
    sentences = {tuple(doc[0]) for doc in docs}
    for inst in instances:
        tokens = unmasked(inst)
        sep = tokens.index(SEP_ID)
        if inst.is_next:
            assert tuple(tokens[1:sep] + tokens[sep + 1 : -1]) in sentences
            assert is_word_start[tokens[sep + 1]] or not any(is_word_start[t] for t in tokens[2:-1])


def test_every_sentence_is_used(is_word_start):
    # Sentences left over when B comes from another document are put back, not dropped.
    rng = random.Random(0)
    ids = iter(range(N_SPECIAL, len(is_word_start)))
    docs = [[[next(ids) for _ in range(5)] for _ in range(12)] for _ in range(10)]
    instances = data.create_training_instances(docs, 64, 1, 0.0, MASK_PROB, 10, len(is_word_start), is_word_start, rng)
    assert {inst.is_next for inst in instances} == {0, 1}
    seen = set()
    for inst in instances:
        tokens = unmasked(inst)
        sep = tokens.index(SEP_ID)
        seen.update(tokens[1:sep] if not inst.is_next else tokens[1:sep] + tokens[sep + 1 : -1])
    for doc in docs:
        for sentence in doc:
            assert seen & set(sentence), sentence


def test_create_masked_lm_predictions(is_word_start):
    vocab_size = len(is_word_start)
    rng = random.Random(0)
    tokens = [CLS_ID] + [rng.randrange(N_SPECIAL, vocab_size) for _ in range(60)] + [SEP_ID]
    for _ in range(20):
        output, pos, labels = data.create_masked_lm_predictions(tokens, 0.15, 9, vocab_size, rng, is_word_start)
        assert len(output) == len(tokens) and 1 <= len(pos) <= 9
        assert labels == [tokens[i] for i in pos]
        assert all(output[i] == tokens[i] for i in range(len(tokens)) if i not in pos)
        assert output[0] == CLS_ID and output[-1] == SEP_ID


def test_literal_specials_in_text_are_removed(sp):
    ids = data.tokenize_document(["이것은 [MASK] 시험이다. [SEP] 다음 [CLS] 문장이다."], sp)
    flat = [t for sentence in ids for t in sentence]
    assert flat and not {SEP_ID, CLS_ID, MASK_ID} & set(flat)


def test_seeded(sample_ids, is_word_start):
    def make(seed):
        rng = random.Random(seed)
        return [
            i.to_json()
            for i in data.create_training_instances(
                sample_ids[:40], N_SEQ, 2, 0.1, MASK_PROB, MAX_PRED, len(is_word_start), is_word_start, rng
            )
        ]

    assert make(3) == make(3)
    assert make(3) != make(4)


def run_cli(*args):
    return subprocess.run([sys.executable, "data.py", *args], check=False, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def cli_output(sample_spm, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")

    def run(name, *args):
        path = str(out / name)
        result = run_cli(
            "--input",
            SAMPLE_CORPUS,
            "--vocab",
            sample_spm,
            "--output",
            path,
            "--n_seq",
            "128",
            "--chunk_docs",
            "100",
            *args,
        )
        assert result.returncode == 0, result.stderr
        with open(path, "rb") as f:
            return f.read(), result.stdout

    return run


def test_cli_end_to_end(cli_output, sp):
    raw, stdout = cli_output("a.json", "--workers", "1")
    lines = raw.decode("utf-8").splitlines()
    assert f"wrote {len(lines)} instances from 346 documents" in stdout and "MB/s" in stdout
    for line in lines:
        inst = json.loads(line)
        assert list(inst) == ["tokens", "segment", "is_next", "mask_pos", "mask_label"]
        assert len(inst["tokens"]) <= 128 and inst["tokens"][0] == CLS_ID and inst["tokens"][-1] == SEP_ID
        assert all(isinstance(t, int) and 0 <= t < sp.get_piece_size() for t in inst["tokens"])
        assert len(inst["mask_pos"]) <= 19  # default max_pred = round(128 * 0.15)
    # instances are shuffled within a chunk, not left in document order
    first_a = [json.loads(line)["tokens"][1:6] for line in lines[:20]]
    assert first_a != sorted(first_a)


def test_cli_deterministic_across_workers_and_seeds(cli_output):
    one, _ = cli_output("a.json", "--workers", "1")
    again, _ = cli_output("b.json", "--workers", "1")
    two, _ = cli_output("c.json", "--workers", "2")
    other, _ = cli_output("d.json", "--workers", "2", "--seed", "7")
    assert one == again == two
    assert other != one


def test_cli_dupe_factor(cli_output):
    one, _ = cli_output("a.json")
    two, _ = cli_output("e.json", "--dupe_factor", "2")
    assert 1.8 < two.count(b"\n") / one.count(b"\n") < 2.2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--input", "no/such/corpus"], "no/such/corpus not found"),
        (["--vocab", "no/such.model"], "no/such.model not found; run `python vocab.py` first"),
        (["--mask_prob", "1.5"], "--mask_prob must be in (0, 1)"),
        (["--n_seq", "4"], "--n_seq must be at least 8"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_cli_user_errors(sample_spm, tmp_path, args, message):
    out = tmp_path / "out.json"
    result = run_cli("--input", SAMPLE_CORPUS, "--vocab", sample_spm, "--output", str(out), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not out.exists()


def test_cli_malformed_inputs(sample_spm, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"this is not gzip")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01junk")
    cases = [
        ([str(empty), sample_spm], "no documents found in"),
        ([str(bad), sample_spm], "bad.txt.gz"),
        ([SAMPLE_CORPUS, str(junk)], "junk.model is not a SentencePiece model"),
    ]
    for (corpus, model), message in cases:
        out = tmp_path / "out.json"
        result = run_cli("--input", corpus, "--vocab", model, "--output", str(out), "--workers", "2")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1]
        assert not out.exists() and not list(tmp_path.glob("out.json.tmp*"))


def test_dynamic_masking_draws_new_whole_word_masks_each_epoch(instances, is_word_start, tmp_path):
    from store import DynamicMasking, PretrainStore

    path = tmp_path / "inst.json"
    path.write_text("".join(inst.to_json() + "\n" for inst in instances[:2000]))
    store = PretrainStore(str(path))
    dyn = DynamicMasking(store, is_word_start, MASK_PROB, MAX_PRED, seed=42)
    assert len(dyn) == len(store) == 2000

    def epoch_of(e):
        dyn.epoch = e
        return [dyn[i] for i in range(len(dyn))]

    first, again, second = epoch_of(0), epoch_of(0), epoch_of(1)
    n_tokens = n_masked = n_same_masks = 0
    for inst, a, b, c in zip(instances, first, again, second):
        for x, y in zip(a, b):  # the same (seed, epoch, index): the same masks
            assert np.array_equal(x, y)
        for tokens, len_a, is_next, pos, label in (a, c):
            assert (len_a, is_next) == (inst.segment.index(1), inst.is_next)
            original = tokens.copy()
            original[pos] = label
            assert original.tolist() == unmasked(inst)  # the text under the masks is untouched
            assert 1 <= len(pos) <= MAX_PRED and list(pos) == sorted(set(pos.tolist()))
            masked = set(pos.tolist())
            for word in words(original.tolist(), is_word_start):
                assert len({i in masked for i in word}) == 1  # whole words only
        n_tokens += len(a[0])
        n_masked += len(a[3])
        n_same_masks += np.array_equal(a[3], c[3])
    assert abs(n_masked / n_tokens - MASK_PROB) < 0.01
    assert n_same_masks < 0.1 * len(dyn)  # another epoch, other masks
    assert sum(np.array_equal(a[3], inst.mask_pos) for inst, a in zip(instances, first)) < 0.1 * len(dyn)


def test_two_runs_building_one_cache_at_once_both_get_it(instances, tmp_path):
    """Two pretrain.py runs started together on one file: each builds its own temp dir; neither crashes
    on the other's, and both read the same complete cache (before, the second crashed on a missing meta.json)."""
    import multiprocessing

    from store import PretrainStore

    path = tmp_path / "inst.json"
    path.write_text("".join(inst.to_json() + "\n" for inst in instances) * 3)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()

    def build():
        barrier.wait()  # start together, so the two builds overlap
        try:
            store = PretrainStore(str(path))
            results.put((len(store), store[len(store) - 1][0].tolist()))
        except Exception as e:  # noqa: BLE001 (reported to the parent, which fails the test)
            results.put(repr(e))

    procs = [ctx.Process(target=build) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert got[0] == got[1] == (3 * len(instances), instances[-1].tokens), got
    assert sorted(os.listdir(tmp_path)) == ["inst.json", "inst.json.cache"]  # no temp dir left behind
