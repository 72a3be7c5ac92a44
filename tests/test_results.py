"""results.py end to end on the bundled sample with a micro model: every row, the LR choice on validation,
the CSV, the table and the plots, and a second run that reuses every stage."""

import csv
import json
import os
import subprocess
import sys

import torch
from conftest import MICRO, ROOT, SAMPLE, nsmc_head, wiki_head


def test_results_script_builds_the_table(tmp_path):
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    out, img = tmp_path / "out", tmp_path / "img"
    cmd = [
        sys.executable,
        "results.py",
        "--wiki",
        wiki_head(tmp_path / "wiki.txt", 60),  # 60 of the 346 sample articles: ~1,700 characters
        "--train",
        nsmc_head(tmp_path / "train.txt", 400, "ratings_train.txt"),
        "--test",
        nsmc_head(tmp_path / "test.txt", 100, "ratings_test.txt"),
        "--out",
        str(out),
        "--img",
        str(img),
        "--config",
        str(config),
        "--vocab_size",
        "2500",
        "--n_seq",
        "64",
        "--wiki_steps",
        "3,6",
        "--tapt_steps",
        "3",
        "--tapt_alone",
        "--tapt_dupe",
        "2",
        "--pretrain_batch",
        "8",
        "--dynamic_mask",
        "--seeds",
        "1,2",
        "--lr",
        "1e-3",
        "--lr_none",
        "1e-3,3e-3",
        "--epoch",
        "2",
        "--batch",
        "32",
        "--sweep_reviews",
        "200",
        "--hardware",
        "test CPU",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # vocab, 2 data, 3 pretraining runs, 2 seeds for each of the 5 rows, and the 2 LRs of 'none' on the 200-review
    # sweep file
    assert p.stdout.count("$ ") == 1 + 2 + 3 + 5 * 2 + 2
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    items = ["none", "wiki 3", "wiki 6", "wiki 6 + nsmc 3", "nsmc 3"]
    assert [r["item"] for r in rows] == [i for i in items for _ in (1, 2)]
    assert all(0 <= float(r["test_acc"]) <= 1 and r["hardware"] == "test CPU" for r in rows)
    # the LR of 'none' is the one with the better validation accuracy on the sweep file
    valid = {}
    for lr in ("1e-3", "3e-3"):
        with open(out / "ft" / f"none_sweep_lr{lr}_b32_s1" / "log.csv") as f:
            valid[lr] = max(float(r["valid_acc"]) for r in csv.DictReader(f))
    assert rows[0]["lr"] == rows[1]["lr"] == ("1e-3" if valid["1e-3"] >= valid["3e-3"] else "3e-3")
    assert (
        "--train " + str(out / "sweep200_train.txt") in p.stdout
        and len((out / "sweep200_train.txt").read_text().splitlines()) == 201
    )
    # the kept step-3 weights and the continued (TAPT) run exist; TAPT started from the final wiki weights
    assert (out / "wiki_step3.pth").exists() and (out / "wiki+nsmc.pth").exists() and (out / "nsmc.pth").exists()
    assert "starting from the weights of" in (out / "pretrain_wiki+nsmc.log").read_text()
    pretrain_cmds = [line for line in p.stdout.splitlines() if line.startswith("$ ") and "pretrain.py" in line]
    assert len(pretrain_cmds) == 3 and all("--dynamic_mask" in line for line in pretrain_cmds)
    # the TAPT text is the training file's reviews, never the test file's
    text = (out / "nsmc_train_doc10.txt").read_text(encoding="utf-8")
    test_reviews = [
        line.split("\t")[1] for line in (tmp_path / "test.txt").read_text(encoding="utf-8").splitlines()[1:]
    ]
    train_reviews = [
        line.split("\t")[1] for line in (tmp_path / "train.txt").read_text(encoding="utf-8").splitlines()[1:]
    ]
    assert set(text.split("\n")) - {""} == {r.strip() for r in train_reviews if r.strip()}
    assert not ({r for r in test_reviews if len(r) > 20} - set(train_reviews)) & set(text.split("\n"))
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| ITEM | pretraining | epoch | loss | accuracy | time | hardware |" and len(table) == 2 + len(
        items
    )
    assert all(os.path.getsize(img / f) > 1000 for f in ("loss.svg", "accuracy.svg"))

    # a second run runs nothing again and writes the same table
    p2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert p2.returncode == 0 and "$ " not in p2.stdout, p2.stdout + p2.stderr
    assert (out / "results.md").read_text().splitlines() == table
    # a run of one row with other options replaces that row only
    p3 = subprocess.run(
        [*cmd, "--rows", "wiki 3", "--seeds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=400, check=False
    )
    assert p3.returncode == 0 and "$ " not in p3.stdout, p3.stdout + p3.stderr
    new = (out / "results.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in new] == [line.split(" | ")[0] for line in table]
    assert "(1 seed;" in new[3] and "(2 seeds;" in table[3] and new[2] == table[2] and new[4:] == table[4:]


def test_results_script_one_line_errors(tmp_path):
    p = subprocess.run(
        [sys.executable, "results.py", "--wiki", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope'} not found")
    sample = [
        "--wiki",
        os.path.join(SAMPLE, "kowiki-sample.txt.xz"),
        "--train",
        os.path.join(SAMPLE, "ratings_train.txt"),
        "--test",
        os.path.join(SAMPLE, "ratings_test.txt"),
        "--out",
        str(tmp_path / "out"),
        "--img",
        str(tmp_path / "img"),
    ]
    p = subprocess.run(
        [sys.executable, "results.py", *sample, "--rows", "wiki 7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
        "error: --rows: unknown row(s) ['wiki 7']"
    )
    p = subprocess.run(
        [sys.executable, "results.py", *sample, "--pretrain_batch", "64", "--pretrain_accum", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: --pretrain_accum must divide --pretrain_batch (64), got 5"
    )
    if not torch.cuda.is_available():
        p = subprocess.run(
            [sys.executable, "results.py", *sample, "--gpu", "0"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
            "error: --gpu 0 given but no CUDA GPU is available; leave out --gpu to train on the CPU"
        )


def reviews_vocab_cmd(tmp_path, n_train, n_test, *rest):
    """results.py on the sample with a micro model and a vocabulary from the first n_train training reviews."""
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    return [
        sys.executable,
        "results.py",
        "--wiki",
        os.path.join(SAMPLE, "kowiki-sample.txt.xz"),
        "--train",
        nsmc_head(tmp_path / "train.txt", n_train, "ratings_train.txt"),
        "--test",
        nsmc_head(tmp_path / "test.txt", n_test, "ratings_test.txt"),
        "--out",
        str(tmp_path / "out"),
        "--img",
        str(tmp_path / "img"),
        "--config",
        str(config),
        "--vocab_size",
        "1200",
        "--vocab_text",
        "nsmc",
        "--wiki_steps",
        "",
        "--tapt_doc",
        "50",
        "--seeds",
        "1",
        "--batch",
        "32",
        "--epoch",
        "1",
        *rest,
    ]


def test_results_vocab_from_the_training_reviews(tmp_path):
    out = tmp_path / "out"
    cmd = reviews_vocab_cmd(tmp_path, 400, 50, "--tapt_steps", "2", "--rows", "none", "--lr_none", "1e-3")
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    text = out / "nsmc_train_doc50.txt"
    assert f"vocab.py --input {text} --prefix {out / 'nsmc_vocab'} " in p.stdout
    assert (
        f"--vocab {out / 'nsmc_vocab.model'} " in p.stdout
        and "data.py" not in p.stdout
        and "pretrain.py" not in p.stdout
    )
    docs = text.read_text(encoding="utf-8").split("\n\n")
    assert [len(d.split("\n")) for d in docs[:-1]] == [50] * 8 and docs[-1] == ""  # 400 reviews, none empty
    # the instances and checkpoints in OUT belong to its vocab: another --vocab_text needs another --out
    p = subprocess.run(
        [*cmd[: cmd.index("--vocab_text")], "--rows", "none"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds nsmc_vocab.model, made with another --vocab_text; pass another --out"
    )


def is_held(path):
    import fcntl

    if not os.path.exists(path):
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the file lets go


def test_results_calls_on_one_out_take_turns(tmp_path, capsys):
    """The stages whose files results.py calls on one --out share wait for each other (gpu_results.sh runs one
    call per seed side by side)."""
    import time

    import results

    lock = tmp_path / "results.lock"
    first = subprocess.Popen(["flock", str(lock), "sleep", "2"])  # as a first results.py in that stage
    while not is_held(lock):
        time.sleep(0.01)
    t = time.time()
    turn = results.take_turn(str(tmp_path), "results.csv")
    waited = time.time() - t
    turn.close()
    first.wait()
    assert f"waiting for another results.py on {tmp_path} (results.csv)" in capsys.readouterr().out
    assert waited > 0.3


def test_results_with_electra_pretraining(tmp_path):
    """--objective electra: pretrain.py is asked for it, the row says so, the plot takes the generator's loss,
    and an OUT pretrained with one objective refuses the other."""
    out = tmp_path / "out"
    cmd = reviews_vocab_cmd(tmp_path, 300, 50, "--tapt_steps", "3", "--tapt_dupe", "1", "--n_seq", "64",
                            "--pretrain_batch", "8", "--pretrain_accum", "2", "--save_steps", "2", "--lr", "1e-3",
                            "--rows", "nsmc 3", "--objective", "electra")
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(line for line in p.stdout.splitlines() if "pretrain.py" in line)
    assert line.endswith("--objective electra") and " --batch 4 " in line and " --grad_accum 2 " in line
    assert " --save_steps 2 " in line  # a killed run resumes from its last save
    assert torch.load(out / "nsmc.pth", weights_only=False)["objective"] == "electra"
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["item"] == "nsmc 3" and row["pretraining"] == "ELECTRA, NSMC train text 3 steps"
    assert "generator MLM loss" in (tmp_path / "img" / "loss.svg").read_text()
    p = subprocess.run([*cmd[:-2], "--objective", "mlm"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds checkpoints pretrained with --objective electra; pass another --out"
    )


def test_results_pretrains_on_other_reviews_never_on_a_test_review(tmp_path):
    """--tapt_text: the second stage's instances come from that file's reviews (read from .xz, whitespace
    collapsed, --tapt_doc to a document), the rows are `reviews T`; a test review in it stops the run first."""
    import lzma

    out = tmp_path / "out"
    with open(os.path.join(SAMPLE, "ratings_train.txt"), encoding="utf-8") as f:
        others = [line.split("\t")[1] for line in list(f)[401:521]]  # not among the 300 training reviews below
    others = [r for r in others if r.strip()]
    reviews = tmp_path / "reviews.txt.xz"
    with lzma.open(reviews, "wt", encoding="utf-8") as f:
        f.write("\n".join(["  " + others[0] + "\t", "", *others[1:]]) + "\n")
    cmd = reviews_vocab_cmd(tmp_path, 300, 50, "--tapt_steps", "3", "--tapt_dupe", "1", "--n_seq", "64",
                            "--tapt_text", str(reviews), "--rows", "reviews 3", "--stop_after", "data")
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    text = out / "reviews_doc50.txt"
    assert f"data.py --input {text} " in p.stdout and (out / "reviews64_doc50_dupe1.json").exists()
    docs = text.read_text(encoding="utf-8").split("\n\n")[:-1]
    assert [r for d in docs for r in d.split("\n")] == [" ".join(r.split()) for r in others]
    assert [len(d.split("\n")) for d in docs] == [50] * (len(others) // 50) + [len(others) % 50]
    assert f"vocab.py --input {out / 'nsmc_train_doc50.txt'} " in p.stdout  # the vocabulary: the training reviews

    with open(tmp_path / "test.txt", encoding="utf-8") as f:
        test_review = f.readlines()[7].split("\t")[1]
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(f"{others[0]}\n\n{test_review}  \n{others[1]}\n", encoding="utf-8")
    fresh = tmp_path / "fresh"
    cmd = [*cmd[: cmd.index("--out")], "--out", str(fresh), *cmd[cmd.index("--out") + 2 :]]
    cmd[cmd.index("--tapt_text") + 1] = str(leaky)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        f"error: 1 reviews of {leaky} are reviews of {tmp_path / 'test.txt'} (non-empty line 2 first); the test "
        "reviews must not pretrain: drop them (download.py --what reviews does)"
    )
    assert "vocab.py" not in p.stdout and not (fresh / "nsmc_vocab.model").exists()  # before any work
