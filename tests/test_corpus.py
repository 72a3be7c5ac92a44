import bz2
import gzip
import lzma

import pytest
from conftest import SAMPLE_CORPUS

from corpus import is_heading, iter_documents, split_sentences
from errors import UserError

WIKI = """<doc id="5" url="https://ko.wikipedia.org/wiki?curid=5" title="지미 카터">
지미 카터

지미 카터는 미국의 대통령이다. 그는 조지아주에서 태어났다.
생애.
어린 시절.

그는 땅콩 농부였다.
</doc>
<doc id="6" url="https://ko.wikipedia.org/wiki?curid=6" title="넘겨주기">
넘겨주기

</doc>
<doc id="9" url="https://ko.wikipedia.org/wiki?curid=9" title="수학">
수학

수학은 학문이다.
</doc>
"""
WIKI_DOCS = [
    ["지미 카터는 미국의 대통령이다. 그는 조지아주에서 태어났다.", "그는 땅콩 농부였다."],
    ["수학은 학문이다."],
]

PLAIN = """

첫 문서의 첫 문단이다.
첫 문서의 둘째 문단이다.


둘째 문서다.
  \t
셋째 문서다.
"""
PLAIN_DOCS = [["첫 문서의 첫 문단이다.", "첫 문서의 둘째 문단이다."], ["둘째 문서다."], ["셋째 문서다."]]


def write(path, text, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_wikiextractor_file(tmp_path):
    # Blank lines inside an article are not boundaries; title, headings and the
    # title-only (redirect) article are dropped.
    assert list(iter_documents(write(tmp_path / "wiki_00", WIKI))) == WIKI_DOCS


def test_byte_order_mark_does_not_hide_wikiextractor(tmp_path):
    assert list(iter_documents(write(tmp_path / "wiki_00", "\ufeff" + WIKI))) == WIKI_DOCS


def test_plain_text_blank_line_separated(tmp_path):
    assert list(iter_documents(write(tmp_path / "a.txt", PLAIN))) == PLAIN_DOCS


@pytest.mark.parametrize("ext,opener", [(".gz", gzip.open), (".xz", lzma.open), (".bz2", bz2.open)])
def test_compressed(tmp_path, ext, opener):
    assert list(iter_documents(write(tmp_path / f"wiki_00{ext}", WIKI, opener))) == WIKI_DOCS
    assert list(iter_documents(write(tmp_path / f"a.txt{ext}", PLAIN, opener))) == PLAIN_DOCS


def test_directory_sorted_recursive_hidden_skipped(tmp_path):
    for name in ("AA", "AB", ".git"):
        (tmp_path / name).mkdir()
    write(tmp_path / "AB" / "wiki_00", PLAIN)
    write(tmp_path / "AA" / "wiki_01.xz", "마지막 문서다.\n", lzma.open)
    write(tmp_path / "AA" / "wiki_00", WIKI)
    write(tmp_path / "AA" / ".hidden", "숨은 문서다.\n")
    write(tmp_path / ".git" / "wiki_00", "깃 문서다.\n")
    docs = list(iter_documents(str(tmp_path)))
    assert docs == WIKI_DOCS + [["마지막 문서다."]] + PLAIN_DOCS


def test_sample_corpus_has_no_markup_titles_or_headings():
    docs = list(iter_documents(SAMPLE_CORPUS))
    # 389 articles, of which 43 are redirects/stubs with nothing but a title.
    assert len(docs) == 346
    paragraphs = [p for doc in docs for p in doc]
    assert all(p and p == p.strip() for p in paragraphs)
    assert not any("<doc" in p or "</doc>" in p for p in paragraphs)
    assert docs[0][0].startswith("제임스 얼 카터 주니어")  # title line "지미 카터" dropped
    assert "생애." not in paragraphs and "어린 시절." not in paragraphs


def test_empty_inputs_give_no_documents(tmp_path):
    assert list(iter_documents(write(tmp_path / "empty.txt", "\n \n\n"))) == []
    only_titles = '<doc id="1" url="u" title="t">\nt\n\n</doc>\n'
    assert list(iter_documents(write(tmp_path / "wiki_00", only_titles))) == []


def test_missing_path_is_user_error(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match="nope not found.*download.py.*data/sample"):
        iter_documents(missing)  # at the call, before iterating


def test_unreadable_files_are_user_errors(tmp_path):
    bad_xz = tmp_path / "bad.txt.xz"
    bad_xz.write_bytes(b"not xz at all")
    with pytest.raises(UserError, match="bad.txt.xz"):
        list(iter_documents(str(bad_xz)))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("첫 줄\n\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt is not UTF-8 text: line 3, byte 4 of the line .*iconv"):
        list(iter_documents(str(latin1)))


def test_split_sentences():
    assert split_sentences('그는 "안녕." 이라고 말했다. 정말? 응! (괄호 안.) 끝') == [
        '그는 "안녕."',
        "이라고 말했다.",
        "정말?",
        "응!",
        "(괄호 안.)",
        "끝",
    ]
    assert split_sentences("5.17 쿠데타와 3.14는 나뉘지 않는다.") == ["5.17 쿠데타와 3.14는 나뉘지 않는다."]
    assert split_sentences("  한 문장.  ") == ["한 문장."]
    assert split_sentences("") == []


@pytest.mark.parametrize(
    "line,heading",
    [
        ("생애.", True),
        ("어린 시절.", True),
        ("원자(原子)와 원소(元素).", True),
        ("그는 1924년에 태어났다.", False),  # short, but a sentence
        ("대한민국과의 관계", False),  # no '.', kept (a harmless short paragraph)
        ("1.5 버전.", False),
        ("무엇인가? 그것.", False),
        ("이것은 서른 글자를 훨씬 넘는 아주 긴 줄이라서 제목이 될 수 없음.", False),
    ],
)
def test_is_heading(line, heading):
    assert is_heading(line) == heading
