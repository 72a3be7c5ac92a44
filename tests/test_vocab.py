import os
import subprocess
import sys

import pytest
import sentencepiece as spm
from conftest import ROOT, SAMPLE_CORPUS

import vocab
from errors import UserError


def check_specials(sp, n_ordinary):
    assert sp.get_piece_size() == n_ordinary + vocab.N_SPECIAL
    assert [sp.id_to_piece(i) for i in range(vocab.N_SPECIAL)] == [
        "[PAD]",
        "[UNK]",
        "[BOS]",
        "[EOS]",
        "[SEP]",
        "[CLS]",
        "[MASK]",
    ]
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (
        vocab.PAD_ID,
        vocab.UNK_ID,
        vocab.BOS_ID,
        vocab.EOS_ID,
    )
    assert [sp.piece_to_id(p) for p in ("[SEP]", "[CLS]", "[MASK]")] == [vocab.SEP_ID, vocab.CLS_ID, vocab.MASK_ID]
    # user-defined pieces survive as single ids inside text
    assert vocab.MASK_ID in sp.encode("수학은 [MASK] 학문이다.")


def test_bpe_special_ids_and_size(sample_spm):
    check_specials(vocab.load_vocab(sample_spm), 1000)


def test_no_markup_in_vocab(sample_spm):
    # Fed raw lines, SentencePiece learns pieces like "doc", "title", "http" from the <doc> tags.
    sp = vocab.load_vocab(sample_spm)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert not [p for p in pieces if any(m in p for m in ("doc", "title", "http", "curid", "url"))]


def test_unigram(tmp_path):
    # input_sentence_size keeps it quick: unigram on the whole sample takes ~15 s
    model = vocab.train_vocab(
        SAMPLE_CORPUS,
        str(tmp_path / "uni"),
        vocab_size=800,
        model_type="unigram",
        character_coverage=0.98,
        input_sentence_size=2000,
    )
    sp = vocab.load_vocab(model)
    check_specials(sp, 800)
    assert sp.encode("지미 카터", out_type=str)  # a working model


def test_cli_end_to_end(tmp_path):
    prefix = str(tmp_path / "out" / "kowiki")
    result = subprocess.run(
        [
            sys.executable,
            "vocab.py",
            "--input",
            SAMPLE_CORPUS,
            "--prefix",
            prefix,
            "--vocab_size",
            "1200",
            "--character_coverage",
            "0.99",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "1207 pieces" in result.stdout and prefix + ".model" in result.stdout
    assert os.path.exists(prefix + ".vocab")
    check_specials(vocab.load_vocab(prefix + ".model"), 1200)


def test_cli_several_inputs(tmp_path):
    # a made-up word that only the second corpus has becomes a piece: both corpora were read
    extra = tmp_path / "reviews.txt"
    extra.write_text("뷁꿹쀍 최고\n" * 3000, encoding="utf-8")
    prefix = str(tmp_path / "both")
    result = subprocess.run(
        [
            sys.executable,
            "vocab.py",
            "--input",
            SAMPLE_CORPUS,
            str(extra),
            "--prefix",
            prefix,
            "--vocab_size",
            "1200",
            "--character_coverage",
            "0.99",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    sp = vocab.load_vocab(prefix + ".model")
    check_specials(sp, 1200)
    assert sp.encode("뷁꿹쀍", out_type=str) == ["▁뷁꿹쀍"]
    assert sp.encode("지미 카터", out_type=str)[0] != "[UNK]"  # and the first one too
    result = subprocess.run(
        [sys.executable, "vocab.py", "--input", SAMPLE_CORPUS, "no/such.txt", "--prefix", prefix],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: no/such.txt not found")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--input", "no/such/dir"], "no/such/dir not found"),
        (["--input", SAMPLE_CORPUS, "--vocab_size", "0"], "--vocab_size must be positive"),
        (["--input", SAMPLE_CORPUS, "--vocab_size", "10"], "Vocabulary size is smaller than required_chars"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "vocab.py", "--prefix", str(tmp_path / "x"), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_load_vocab_errors(tmp_path):
    with pytest.raises(UserError, match="nope.model not found; run `python vocab.py` first"):
        vocab.load_vocab(str(tmp_path / "nope.model"))
    junk = tmp_path / "junk.model"
    junk.write_text("not a model")
    with pytest.raises(UserError, match="junk.model is not a SentencePiece model"):
        vocab.load_vocab(str(junk))
    # A model with SentencePiece's default specials (<unk>=0, <s>=1, </s>=2) is refused.
    text = tmp_path / "t.txt"
    text.write_text("가나다 라마바 사아자 차카타 파하\n" * 50, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "plain"), vocab_size=30, hard_vocab_limit=False, minloglevel=2
    )
    with pytest.raises(UserError, match=r"expected \['\[PAD\]'"):
        vocab.load_vocab(str(tmp_path / "plain.model"))
