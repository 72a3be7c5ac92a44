"""Self-training: predict.py with several --save (an ensemble: mean probabilities) writes the teacher file,
train.py --unlabeled learns from it with soft targets; the test reviews can never get in, validation's are
dropped, and a bad file is a one-line error."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO, ROOT, nsmc_head, read_log, run_cli

import train
from checkpoint import save_checkpoint
from errors import UserError
from model import BertConfig, BertForSequenceClassification
from nsmc import read_nsmc
from vocab import load_vocab

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory, sample_spm):
    """Two random micro classifiers (their labels differ), 300 training and 100 test reviews, and 200 other
    reviews of the sample training file as the unlabeled ones."""
    d = tmp_path_factory.mktemp("selftrain")
    (d / "micro.json").write_text(json.dumps(MICRO))
    config = BertConfig.from_dict({**MICRO, "vocab_size": 1007, "initializer_range": 0.5})
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
        path = d / f"clf{seed}.pth"
        save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict(), "n_seq": 32})
        models.append(str(path))
    train_file = nsmc_head(d / "train.txt", 900)
    test_file = nsmc_head(d / "test.txt", 100, "ratings_test.txt")
    reviews = read_nsmc(train_file)[0]
    seen = {" ".join(r.split()) for r in reviews[:300] + read_nsmc(test_file)[0]}
    unlabeled = [r for r in reviews[300:] if r.strip() and " ".join(r.split()) not in seen][:200]
    (d / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n", encoding="utf-8")
    with open(train_file, encoding="utf-8") as f:
        (d / "train300.txt").write_text("".join(f.readlines()[:301]), encoding="utf-8")
    return {
        "dir": d,
        "config": str(d / "micro.json"),
        "vocab": sample_spm,
        "models": models,
        "train": str(d / "train300.txt"),
        "test": test_file,
        "unlabeled": str(d / "unlabeled.txt"),
    }


def teacher_file(w, path, *models, source=None):
    """predict.py's output on the unlabeled reviews (or `source`), as a user makes it: stdout to a file."""
    saves = [a for m in models for a in ("--save", m)]
    with open(path, "w", encoding="utf-8") as f:
        p = subprocess.run(
            [sys.executable, "predict.py", "--input", source or w["unlabeled"], "--vocab", w["vocab"], *saves],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert p.returncode == 0, p.stderr
    return str(path)


def test_ensemble_is_the_mean_of_the_probabilities(work):
    a, b = work["models"]
    lines = {m: teacher_file(work, work["dir"] / f"t{i}.tsv", m) for i, m in enumerate((a, b))}
    both = teacher_file(work, work["dir"] / "teacher.tsv", a, b)

    def p_positive(path):
        rows = (x.split("\t", 2) for x in Path(path).read_text(encoding="utf-8").splitlines())
        return [float(p) if lab == "positive" else 1 - float(p) for lab, p, _ in rows]

    pa, pb, pab = p_positive(lines[a]), p_positive(lines[b]), p_positive(both)
    assert len(pab) == 200 and pa != pb  # two different models
    assert max(abs((x + y) / 2 - z) for x, y, z in zip(pa, pb, pab)) < 2e-4  # 4 digits printed, bf16 or fp32
    texts = [line.split("\t", 2)[2] for line in Path(both).read_text(encoding="utf-8").splitlines()]
    assert texts == Path(work["unlabeled"]).read_text(encoding="utf-8").splitlines()


def test_predict_into_a_closed_pipe_is_quiet(work, tmp_path):
    """`predict.py ... | head`: far more output than a pipe holds (64 KB), so the write after head exits fails."""
    many = tmp_path / "many.txt"
    many.write_text(Path(work["unlabeled"]).read_text(encoding="utf-8") * 20, encoding="utf-8")
    assert many.stat().st_size > 4 * 65536
    p = subprocess.run(
        f"{sys.executable} predict.py --input {many} --vocab {work['vocab']} --save {work['models'][0]} --window 50"
        " | head -n 1",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def finetune(w, name, *extra):
    return [
        "--config",
        w["config"],
        "--vocab",
        w["vocab"],
        "--train",
        w["train"],
        "--test",
        w["test"],
        "--save",
        str(w["dir"] / f"{name}.pth"),
        "--log_dir",
        str(w["dir"] / name),
        "--epoch",
        "1",
        "--batch",
        "32",
        "--lr",
        "1e-3",
        "--valid",
        "0.1",
        "--n_seq",
        "32",
        "--fp32",
        *extra,
    ]


def test_soft_targets_of_labels_are_the_plain_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 2), torch.randint(0, 2, (7,))
    target = torch.stack([1 - labels.float(), labels.float()], -1)
    torch.testing.assert_close(
        -(target * logits.log_softmax(-1)).sum(), F.cross_entropy(logits, labels, reduction="sum")
    )


def test_unlabeled_reviews_train_with_the_teachers_probabilities(work, capsys):
    teacher = str(work["dir"] / "teacher.tsv")
    if not (work["dir"] / "teacher.tsv").exists():
        teacher_file(work, work["dir"] / "teacher.tsv", *work["models"])
    train.main(finetune(work, "plain"))
    train.main(finetune(work, "self", "--unlabeled", teacher))
    out = capsys.readouterr().out
    assert f"{teacher}: 200 unlabeled reviews with the teacher's probabilities (0 dropped" in out
    assert "470 train / 30 valid / 100 test reviews" in out  # 270 + 200
    plain, self_ = read_log(work["dir"] / "plain" / "log.csv"), read_log(work["dir"] / "self" / "log.csv")
    assert plain[0]["train_loss"] != self_[0]["train_loss"]
    # the same labels, surer probabilities: another model, so the probabilities are what it learns, not the labels
    lines = Path(teacher).read_text(encoding="utf-8").splitlines(keepends=True)
    for name, p in (("sure", "0.9900"), ("unsure", "0.6000")):
        (work["dir"] / f"{name}.tsv").write_text("".join(f"{x[:8]}\t{p}\t{x.split(chr(9), 2)[2]}" for x in lines))
        train.main(finetune(work, name, "--unlabeled", str(work["dir"] / f"{name}.tsv")))
    a = torch.load(work["dir"] / "sure.pth", weights_only=True)["model"]
    b = torch.load(work["dir"] / "unsure.pth", weights_only=True)["model"]
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    # --unlabeled_max takes the first lines only
    train.main(finetune(work, "max", "--unlabeled", teacher, "--unlabeled_max", "50"))
    assert "50 unlabeled reviews" in capsys.readouterr().out


def test_test_reviews_never_train_and_validation_ones_are_dropped(work, tmp_path, capsys):
    test_reviews = read_nsmc(work["test"])[0]
    leak = tmp_path / "leak.tsv"
    leak.write_text(f"positive\t0.9\tx\npositive\t0.8\t  {test_reviews[3]} \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"1 reviews of .*leak\.tsv are reviews of .*test\.txt \(line 2 first\)"):
        train.main(finetune(work, "leak", "--unlabeled", str(leak)))
    # reviews of the validation share (seed 42's 10%) are dropped, and so is a training review of the same text
    reviews = read_nsmc(work["train"])[0]
    valid = {" ".join(reviews[i].split()) for i in np.random.default_rng(42).permutation(300)[:30]}
    dropped = sum(" ".join(r.split()) in valid for r in reviews)
    assert dropped >= 30
    (tmp_path / "own.tsv").write_text("".join(f"negative\t0.7\t{r}\n" for r in reviews), encoding="utf-8")
    train.main(finetune(work, "own", "--unlabeled", str(tmp_path / "own.tsv")))
    out = capsys.readouterr().out
    assert f"{300 - dropped} unlabeled reviews with the teacher's probabilities ({dropped} dropped: reviews of" in out


@pytest.mark.parametrize(
    "text, match",
    [
        ("positive\tx\tfoo\n", r"bad\.tsv:1: expected predict\.py's 'label<TAB>probability<TAB>review'"),
        ("positive\t0.9\tfoo\nmaybe\t0.9\tbar\n", r"bad\.tsv:2: expected predict\.py's"),
        ("positive\t0.2\tfoo\n", r"bad\.tsv:1: expected"),  # predict.py prints the winning label's probability
        ("", r"bad\.tsv has no reviews"),
    ],
)
def test_bad_teacher_files_are_one_line(work, tmp_path, text, match):
    bad = tmp_path / "bad.tsv"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        train.main(finetune(work, "bad", "--unlabeled", str(bad)))


def test_cli_error_for_a_missing_teacher_file(work, tmp_path):
    code, out = run_cli("train.py", *finetune(work, "none", "--unlabeled", str(tmp_path / "nope.tsv")))
    assert code == 2 and out.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope.tsv'}")
    assert "Traceback" not in out


def test_valid_seed_gives_every_seed_the_same_validation_reviews(work, sample_spm):
    """--valid_seed: teachers and students of different --seed share one validation split, so a teacher ensemble
    never trained on a student's validation reviews; without it each --seed draws its own."""
    sp = load_vocab(sample_spm)

    def valid_ids(*extra):
        args = train.get_args(["--train", work["train"], "--test", work["test"], "--n_seq", "32", *extra])
        train.check_args(args)
        return [tuple(x) for x in train.load_splits(args, sp, log=lambda *a: None)[1][0]]

    assert valid_ids("--seed", "1", "--valid_seed", "7") == valid_ids("--seed", "2", "--valid_seed", "7")
    assert valid_ids("--seed", "1") != valid_ids("--seed", "2")
    assert valid_ids("--seed", "7") == valid_ids("--seed", "1", "--valid_seed", "7")  # the default is --seed
