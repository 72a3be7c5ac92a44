"""End to end on the bundled sample: vocab -> data -> pretrain -> resume -> train -> predict, and the error paths."""

import csv
import json
import os

import pytest
import torch
from conftest import MICRO, nsmc_head, run_cli, wiki_head

import predict
import pretrain
import train
from errors import UserError


@pytest.fixture(scope="module")
def work(tmp_path_factory, sample_spm):
    """A micro config, the first 40 sample articles, their instances and a 2-epoch pretraining run."""
    d = tmp_path_factory.mktemp("pipeline")
    config = d / "micro.json"
    config.write_text(json.dumps(MICRO))
    corpus = wiki_head(d / "wiki.txt", 40)
    instances = d / "bert.json"
    code, out = run_cli(
        "data.py", "--input", str(corpus), "--vocab", sample_spm, "--output", str(instances), "--n_seq", "64"
    )
    assert code == 0, out
    paths = {
        "dir": d,
        "config": str(config),
        "vocab": sample_spm,
        "corpus": str(corpus),
        "instances": str(instances),
        "save": str(d / "pretrain.pth"),
        "log": str(d / "pretrain_log"),
    }
    pretrain.main(
        [
            "--config",
            paths["config"],
            "--vocab",
            sample_spm,
            "--input",
            paths["instances"],
            "--save",
            paths["save"],
            "--epoch",
            "1",
            "--batch",
            "16",
            "--lr",
            "1e-3",
            "--log_dir",
            paths["log"],
            "--log_every",
            "5",
        ]
    )
    return paths


def pretrain_args(w, *extra):
    return [
        "--config",
        w["config"],
        "--vocab",
        w["vocab"],
        "--input",
        w["instances"],
        "--save",
        w["save"],
        "--batch",
        "16",
        "--lr",
        "1e-3",
        "--log_dir",
        w["log"],
        "--log_every",
        "5",
        *extra,
    ]


def test_pretrain_writes_checkpoint_log_and_plot(work):
    state = torch.load(work["save"], weights_only=True)
    assert state["epoch"] == 1 and state["step"] > 0
    assert {"model", "optimizer", "scheduler", "config", "vocab_size"} <= set(state)
    assert state["vocab_size"] == 1007 and state["config"]["hidden_size"] == 32
    with open(os.path.join(work["log"], "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows and {"mlm_loss", "mlm_acc", "nsp_acc"} <= set(rows[0])
    assert 0 <= float(rows[-1]["mlm_acc"]) <= 1 and float(rows[-1]["mlm_loss"]) > 0
    assert os.path.getsize(os.path.join(work["log"], "loss.svg")) > 1000
    # the binary cache was built beside the instances and is reused
    assert os.path.exists(work["instances"] + ".cache/meta.json")


def test_resume_continues_from_the_saved_epoch(work, capsys):
    first = torch.load(work["save"], weights_only=True)
    pretrain.main(pretrain_args(work, "--epoch", "2"))
    out = capsys.readouterr().out
    assert f"resuming from {work['save']}: 1 epochs, {first['step']} steps done" in out
    second = torch.load(work["save"], weights_only=True)
    assert second["epoch"] == 2 and second["step"] == 2 * first["step"]
    assert not torch.equal(first["model"]["bert.pooler.dense.weight"], second["model"]["bert.pooler.dense.weight"])
    # the scheduler went on from where it was: its step count is the total
    assert second["scheduler"]["last_epoch"] == second["step"]
    pretrain.main(pretrain_args(work, "--epoch", "2"))
    assert "nothing to do" in capsys.readouterr().out


def test_train_and_predict(work, tmp_path, capsys):
    tr = nsmc_head(tmp_path / "train.txt", 600, "ratings_train.txt")
    te = nsmc_head(tmp_path / "test.txt", 200, "ratings_test.txt")
    save = str(tmp_path / "best.pth")
    train.main(
        [
            "--config",
            work["config"],
            "--vocab",
            work["vocab"],
            "--pretrain",
            work["save"],
            "--train",
            tr,
            "--test",
            te,
            "--save",
            save,
            "--epoch",
            "2",
            "--batch",
            "32",
            "--lr",
            "1e-3",
            "--log_dir",
            str(tmp_path / "log"),
        ]
    )
    out = capsys.readouterr().out
    assert f"fine-tuning from {work['save']}" in out
    assert "x 1 processes; parts of at most 2,048 padded tokens)" in out, out  # --batch_tokens's default on a CPU
    assert "best epoch" in out and "test accuracy" in out
    with open(tmp_path / "log" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0 <= float(r["test_acc"]) <= 1 for r in rows)
    for svg in ("loss.svg", "accuracy.svg"):
        assert os.path.getsize(tmp_path / "log" / svg) > 1000
    best = torch.load(save, weights_only=True)
    assert best["valid_acc"] == max(float(r["valid_acc"]) for r in rows)
    # the classifier's encoder started from the pretrained one, then moved
    pre = torch.load(work["save"], weights_only=True)["model"]["bert.embeddings.word_embeddings.weight"]
    assert not torch.equal(pre, best["model"]["bert.embeddings.word_embeddings.weight"])

    reviews_file = tmp_path / "reviews.txt"
    reviews_file.write_text("정말 재밌어요\n\n최악의 영화\n", encoding="utf-8")
    predict.main(["--save", save, "--vocab", work["vocab"], "--input", str(reviews_file), "좋아요"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines:
        label, prob, _ = line.split("\t")
        assert label in ("positive", "negative") and 0.5 <= float(prob) <= 1


def test_train_from_scratch_says_so_and_handles_empty_reviews(work, tmp_path, capsys):
    tr = tmp_path / "train.txt"
    tr.write_text(
        "id\tdocument\tlabel\n1\t\t0\n2\t재밌다\t1\n3\t별로\t0\n4\t최고\t1\n5\t\t1\n6\t지루함\t0\n", encoding="utf-8"
    )
    te = tmp_path / "test.txt"
    te.write_text("id\tdocument\tlabel\n7\t\t1\n8\t좋다\t1\n", encoding="utf-8")
    train.main(
        [
            "--config",
            work["config"],
            "--vocab",
            work["vocab"],
            "--train",
            str(tr),
            "--test",
            str(te),
            "--valid",
            "0",
            "--save",
            str(tmp_path / "b.pth"),
            "--epoch",
            "1",
            "--batch",
            "4",
            "--log_dir",
            str(tmp_path / "log"),
        ]
    )
    assert "training from scratch" in capsys.readouterr().out


def test_cli_errors_are_one_line(work, tmp_path):
    code, out = run_cli("pretrain.py", "--vocab", str(tmp_path / "nope.model"), "--input", work["instances"])
    assert code == 2 and "Traceback" not in out
    assert out.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.model'} not found; run `python vocab.py` first"
    code, out = run_cli(
        "train.py", "--vocab", work["vocab"], "--config", work["config"], "--pretrain", str(tmp_path / "none.pth")
    )
    assert code == 2 and "Traceback" not in out and "none.pth not found" in out and "pretrain.py" in out


def test_missing_instances_name_the_command(work, tmp_path):
    with pytest.raises(UserError, match=r"missing\.json not found; run `python data.py`"):
        pretrain.main(pretrain_args(work, "--input", str(tmp_path / "missing.json"), "--save", str(tmp_path / "x.pth")))


def test_malformed_json_line_names_file_and_line(work, tmp_path):
    bad = tmp_path / "bad.json"
    with open(work["instances"]) as f:
        lines = [next(f) for _ in range(3)]
    bad.write_text(lines[0] + lines[1] + '{"tokens": [5, 9, 4\n' + lines[2])
    with pytest.raises(UserError, match=rf"{bad}:3: malformed JSON"):
        pretrain.main(pretrain_args(work, "--input", str(bad), "--save", str(tmp_path / "x.pth")))


def test_mismatched_checkpoint_says_which_field(work, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**MICRO, "hidden_size": 48}))
    with pytest.raises(UserError, match=r"hidden_size=32 but the config in .*other\.json has hidden_size=48"):
        pretrain.main(pretrain_args(work, "--config", str(other), "--epoch", "5"))
    with pytest.raises(UserError, match=r"hidden_size=32 but the config"):
        train.main(["--config", str(other), "--vocab", work["vocab"], "--pretrain", work["save"]])


def test_mismatched_vocabulary_says_so(work, tmp_path):
    import vocab

    small = vocab.train_vocab(work["corpus"], str(tmp_path / "small"), vocab_size=900, character_coverage=0.98)
    with pytest.raises(UserError, match=r"vocabulary of 1007 pieces but the vocab file has 907"):
        train.main(["--config", work["config"], "--vocab", small, "--pretrain", work["save"]])
    # instances made with the larger vocabulary do not fit the smaller one
    with pytest.raises(UserError, match=r"has token id \d+ but .*small\.model has 907 pieces"):
        pretrain.main(pretrain_args(work, "--vocab", small, "--save", str(tmp_path / "x.pth")))


def test_n_seq_above_positions(work, tmp_path):
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**MICRO, "max_position_embeddings": 32}))
    with pytest.raises(
        UserError,
        match=r"instances of \d+ tokens but .*short\.json allows 32 positions; "
        r"rebuild with `python data.py --n_seq 32`",
    ):
        pretrain.main(pretrain_args(work, "--config", str(short), "--save", str(tmp_path / "x.pth")))
    with pytest.raises(UserError, match=r"--n_seq 128 is above the 32 positions"):
        train.main(["--config", str(short), "--vocab", work["vocab"], "--n_seq", "128"])


def test_truncated_checkpoint_and_bad_nsmc_file(work, tmp_path):
    cut = tmp_path / "cut.pth"
    with open(work["save"], "rb") as f:
        cut.write_bytes(f.read()[:1000])
    with pytest.raises(UserError, match=r"cut\.pth is not a readable checkpoint"):
        train.main(["--config", work["config"], "--vocab", work["vocab"], "--pretrain", str(cut)])
    bad = tmp_path / "bad.txt"
    bad.write_text("id\tdocument\tlabel\n1\t좋다\t1\n2\t싫다\tneg\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.txt:3: label must be 0 or 1"):
        train.main(["--config", work["config"], "--vocab", work["vocab"], "--train", str(bad)])
    with pytest.raises(UserError, match=r"is a pretraining checkpoint"):
        predict.main(["--save", work["save"], "--vocab", work["vocab"], "좋다"])


def test_bad_config_and_empty_files_are_one_line(work, tmp_path):
    """A malformed --config and an empty NSMC file end in one line naming the file (the JSON's line and column
    too) and exit 2 in every script that reads them; so do the other bad configs and empty inputs."""
    broken = tmp_path / "broken.json"
    broken.write_text('{"hidden_size": 256,')
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    common = ["--vocab", work["vocab"], "--save", str(tmp_path / "x.pth"), "--log_dir", str(tmp_path / "log")]
    for script, extra, line in (
        ("pretrain.py", ["--config", str(broken), "--input", work["instances"]], f"{broken}:1:21: not valid JSON"),
        ("train.py", ["--config", str(broken)], f"{broken}:1:21: not valid JSON"),
        ("train.py", ["--config", work["config"], "--train", str(empty)], f"{empty} is empty"),
    ):
        code, out = run_cli(script, *common, *extra)
        assert code == 2 and "Traceback" not in out, out
        assert out.strip().splitlines()[-1].startswith(f"error: {line}"), out
    configs = {
        "typed.json": ({**MICRO, "hidden_size": "32"}, r'typed\.json: hidden_size must be int, got "32"'),
        "typo.json": (
            {**MICRO, "num_hiden_layers": 2},
            r"unknown field 'num_hiden_layers'; did you mean 'num_hidden_layers'",
        ),
        "heads.json": (
            {**MICRO, "num_attention_heads": 3},
            r"hidden_size 32 is not a multiple of num_attention_heads 3",
        ),
        "drop.json": ({**MICRO, "hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\), got 1.5"),
        "list.json": ([MICRO], r"list\.json holds a JSON list, not an object"),
    }
    for name, (config, message) in configs.items():
        (tmp_path / name).write_text(json.dumps(config))
        with pytest.raises(UserError, match=message):
            pretrain.main(pretrain_args(work, "--config", str(tmp_path / name), "--save", str(tmp_path / "x.pth")))
    hf = tmp_path / "hf"  # a Hugging Face directory's config.json is checked the same way
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({**MICRO, "hidden_size": None}))
    with pytest.raises(UserError, match=r"hf/config\.json: hidden_size must be int, got null"):
        train.main(["--config", work["config"], "--vocab", work["vocab"], "--pretrain", str(hf)])
    header = tmp_path / "header.txt"
    header.write_text("id\tdocument\tlabel\n")
    with pytest.raises(UserError, match=r"header\.txt has the header but no reviews"):
        train.main(["--config", work["config"], "--vocab", work["vocab"], "--train", str(header)])
    (tmp_path / "none.json").write_text("")
    with pytest.raises(UserError, match=r"none\.json holds no instances"):
        pretrain.main(pretrain_args(work, "--input", str(tmp_path / "none.json"), "--save", str(tmp_path / "x.pth")))
    with pytest.raises(UserError, match=r"nothing to classify"):
        predict.main(["--input", str(empty), "--save", work["save"], "--vocab", work["vocab"]])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("좋다\n".encode("euc-kr"))
    with pytest.raises(UserError, match=r"latin\.txt is not a UTF-8 text file of reviews"):
        predict.main(["--input", str(latin), "--save", work["save"], "--vocab", work["vocab"]])


def test_nsp_class_0_means_b_follows_a(work, tmp_path):
    """As in Google's BERT and Hugging Face's next_sentence_label: trained on is_next=1 only, NSP predicts class 0."""
    with open(work["instances"]) as f:
        rows = [json.loads(next(f)) for _ in range(64)]
    nxt = tmp_path / "all_next.json"
    nxt.write_text("".join(json.dumps({**r, "is_next": 1}) + "\n" for r in rows))
    save = str(tmp_path / "nsp.pth")
    pretrain.main(pretrain_args(work, "--input", str(nxt), "--save", save, "--epoch", "3", "--lr", "3e-3"))
    from model import BertConfig, BertForPreTraining

    state = torch.load(save, weights_only=True)
    model = BertForPreTraining(BertConfig.from_dict(state["config"])).eval()
    model.load_state_dict(state["model"])
    ids = torch.tensor([rows[0]["tokens"]])
    _, nsp = model(ids, torch.tensor([rows[0]["segment"]]), torch.ones_like(ids))
    assert nsp.argmax(-1).item() == 0 and nsp.softmax(-1)[0, 0] > 0.6


def test_early_stopping_on_validation(work, tmp_path, capsys):
    """With --lr 0 the validation accuracy never improves on epoch 1, so --patience 1 stops after epoch 2 of 5."""
    tr = nsmc_head(tmp_path / "train.txt", 200, "ratings_train.txt")
    te = nsmc_head(tmp_path / "test.txt", 50, "ratings_test.txt")
    args = [
        "--config",
        work["config"],
        "--vocab",
        work["vocab"],
        "--train",
        tr,
        "--test",
        te,
        "--epoch",
        "5",
        "--batch",
        "32",
        "--lr",
        "0",
        "--save",
        str(tmp_path / "b.pth"),
    ]
    train.main([*args, "--patience", "1", "--log_dir", str(tmp_path / "p1")])
    assert "early stop: no better validation accuracy in the 1 epoch(s) after epoch 1" in capsys.readouterr().out
    with open(tmp_path / "p1" / "log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    train.main([*args, "--patience", "0", "--log_dir", str(tmp_path / "p0")])
    with open(tmp_path / "p0" / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_keep_steps_keeps_the_weights_of_those_steps(work, tmp_path, capsys):
    save = str(tmp_path / "p.pth")
    pretrain.main(
        [
            "--config",
            work["config"],
            "--vocab",
            work["vocab"],
            "--input",
            work["instances"],
            "--save",
            save,
            "--epoch",
            "1",
            "--max_steps",
            "6",
            "--keep_steps",
            "2,4",
            "--batch",
            "8",
            "--lr",
            "1e-3",
            "--log_dir",
            str(tmp_path / "log"),
        ]
    )
    kept = {s: torch.load(tmp_path / f"p_step{s}.pth", weights_only=True) for s in (2, 4)}
    assert [kept[s]["step"] for s in (2, 4)] == [2, 4] and not os.path.exists(tmp_path / "p_step6.pth")
    w = "bert.encoder.layer.0.attention.self.query.weight"
    last = torch.load(save, weights_only=True)
    assert not torch.equal(kept[2]["model"][w], kept[4]["model"][w]) and not torch.equal(
        kept[4]["model"][w], last["model"][w]
    )
    # a kept checkpoint fine-tunes like any other
    tr = nsmc_head(tmp_path / "train.txt", 100, "ratings_train.txt")
    train.main(
        [
            "--config",
            work["config"],
            "--vocab",
            work["vocab"],
            "--pretrain",
            str(tmp_path / "p_step4.pth"),
            "--train",
            tr,
            "--test",
            tr,
            "--epoch",
            "1",
            "--batch",
            "32",
            "--save",
            str(tmp_path / "b.pth"),
            "--log_dir",
            str(tmp_path / "ft"),
        ]
    )
    assert f"fine-tuning from {tmp_path / 'p_step4.pth'}" in capsys.readouterr().out
    code, out = run_cli("pretrain.py", "--keep_steps", "1,x")
    assert (
        code == 2
        and out.strip().splitlines()[-1] == "error: --keep_steps takes comma-separated step numbers, got '1,x'"
    )
