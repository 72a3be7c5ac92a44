"""download.py against a local HTTP server: NSMC files, a small generated MediaWiki dump, errors.

python -m pytest tests/test_download.py
"""

import bz2
import functools
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import tracemalloc
from xml.sax.saxutils import escape, quoteattr

import pytest

import download

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "download.py")
DUMP = "kowiki-latest-pages-articles.xml.bz2"

NSMC_TRAIN = (
    "id\tdocument\tlabel\n"
    "9976970\t아 더빙.. 진짜 짜증나네요 목소리\t0\n"
    "3819312\t흠...포스터보고 초딩영화줄....오버연기조차 가볍지 않구나\t1\n"
    "6270596\t\t0\n"
    "10265843\t너무재밓었다그래서보는것을추천한다\t0\n"
).encode()
NSMC_TEST = ("id\tdocument\tlabel\n6270596\t굳 ㅋ\t1\n9274899\tGDNTOPCLASSINTHECLUB\t0\n").encode()

CARTER = """{{위키데이터 속성 추적}}
{{정보상자 대통령
| 이름 = 지미 카터
| 그림 = [[파일:JimmyCarterPortrait.jpg|200px]]
}}
'''지미 카터'''(James Earl Carter Jr.{{lang|en|Jimmy}}, 1924년 10월 1일 ~ )는 [[민주당 (미국)|민주당]] 출신 미국 39대 대통령이다.<ref name="백악관">{{웹 인용|url=https://example.org|제목=카터}}</ref>
[[파일:Carter.jpg|섬네일|왼쪽|카터의 [[사진]]]]
[[File:Signature.svg|thumb|서명]]
== 생애 ==
=== 어린 시절 ===
지미 카터는 [[조지아주]] 섬터 카운티 플레인스 마을에서 태어났다.<ref>출처 문장</ref>
{| class="wikitable"
|-
! 연도 !! 직책
|-
| 1971 || 조지아 주지사
|}
=== 빈 절 ===
== 각주 ==
{{각주}}
<references />
[[분류:미국의 대통령]]
[[Category:Living people]]
[[en:Jimmy Carter]]
"""
MATH = """'''수학'''(數學)은 양, [[구조]], [[공간 (수학)|공간]], 변화 등의 개념을 다루는 학문이다.
== 같이 보기 ==
* [[수학자 목록]]
* [[수학 기호]]
== 역사! ==
고대 [[이집트]]와 [[메소포타미아]]에서 시작되었다.&nbsp;그리고 발전했다.
[[분류:수학]]
"""
QUOTED = "'''\"위어드 알\" 얀코빅'''은 미국의 가수이다. <!-- 주석 -->\n[[분류:미국의 가수]]\n"
ONLY_TEMPLATES = "{{동음이의}}\n{{정보상자}}\n[[분류:동음이의]]\n"
PAGES = [  # (id, ns, title, redirect target, wikitext)
    (5, 0, "지미 카터", None, CARTER),
    (9, 0, "수학", None, MATH),
    (10, 0, "카터", "지미 카터", "#넘겨주기 [[지미 카터]]\n넘겨주기 문서에 남은 설명 문장."),
    (11, 4, "위키백과:사랑방", None, "토론 문단입니다. 본문이 아닙니다."),
    (12, 0, "동음이의 문서", None, ONLY_TEMPLATES),
    (13, 0, '"위어드 알" 얀코빅', None, QUOTED),
]
EXPECTED = {"5": "지미 카터", "9": "수학", "13": '"위어드 알" 얀코빅'}


def dump_xml(pages, base="https://ko.wikipedia.org/wiki/%EC%9C%84%ED%82%A4%EB%B0%B1%EA%B3%BC:%EB%8C%80%EB%AC%B8"):
    """A MediaWiki export in the 0.11 schema, shaped like the real pages-articles dump."""
    out = [
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="ko">',
        "  <siteinfo>\n    <sitename>위키백과</sitename>\n    <dbname>kowiki</dbname>",
        f"    <base>{base}</base>",
        '    <namespaces>\n      <namespace key="0" case="first-letter" />',
        '      <namespace key="4" case="first-letter">위키백과</namespace>\n    </namespaces>',
        "  </siteinfo>",
    ]
    for pid, ns, title, redirect, text in pages:
        out.append(f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{pid}</id>")
        if redirect:
            out.append(f"    <redirect title={quoteattr(redirect)} />")
        out.append(
            f"    <revision>\n      <id>{pid + 1000}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Tester</username>\n        <id>77</id>\n"
            f"      </contributor>\n      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
            f"    </revision>\n  </page>"
        )
    out.append("</mediawiki>\n")
    return "\n".join(out).encode()


def raw_file(movie, reviews):
    """A raw/ file of the crawl, in its format (shared/data/reviews/raw_sample/): one movie's reviews, ratings too."""
    return [
        {
            "review_id": rid,
            "movie_id": movie,
            "author": "abcd****",
            "review": text,
            "rating": rating,
            "date": "15.07.16",
        }
        for rid, text, rating in reviews
    ]


# (review id, text, rating); the NSMC test file (NSMC_TEST) has ids 6270596 and 9274899, texts "굳 ㅋ" and
# "GDNTOPCLASSINTHECLUB"; EXCLUDE holds one more review
CRAWL = {
    "raw/10001.json": raw_file(
        "10001",
        [
            ("1", "재밌어요  정말\n최고", "10"),  # kept, whitespace collapsed
            ("2", " 굳   ㅋ ", "10"),  # a test review's text once collapsed: dropped
            ("6270596", "다른 글", "9"),  # a test review's id: dropped
            ("4", " \t ", "1"),  # empty: dropped
            ("5", "GDNTOPCLASSINTHECLUB\t", "1"),  # a test review's text: dropped
            ("6", "제외할 리뷰", "3"),  # in --exclude: dropped
            ("7", "아 더빙.. 진짜 짜증나네요 목소리", "1"),  # a training review: kept
        ],
    ),
    "raw/10002.json": [],
    "raw/10003.json": raw_file("10003", [("8", "마지막\u3000리뷰", "8")]),
}
CRAWL_KEPT = ["재밌어요 정말 최고", "아 더빙.. 진짜 짜증나네요 목소리", "마지막 리뷰"]
EXCLUDE = "제외할   리뷰\n"


def nsmc_archive(raw):
    """The e9t/nsmc repository as GitHub's tar.gz of a commit: one top folder, the crawl in raw/, other files."""
    buf = io.BytesIO()
    files = {"README.md": "# nsmc", "ratings_test.txt": "id\tdocument\tlabel\n1\t다른 파일\t0\n"}
    files |= {name: json.dumps(v, ensure_ascii=False, indent=2) for name, v in raw.items()}
    files["raw/notes.txt"] = "not a movie"
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"nsmc-b6232e6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/cut.xml.bz2":
            return super().do_GET()
        # a download cut off midway: promises 100 kB, sends 10 bytes, closes the connection
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"BZh91AY&SY")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "nsmc").mkdir()
    (root / "nsmc" / "ratings_train.txt").write_bytes(NSMC_TRAIN)
    (root / "nsmc" / "ratings_test.txt").write_bytes(NSMC_TEST)
    (root / "html").mkdir()  # what you get from a github.com/.../blob/ URL instead of a raw one
    for name in download.NSMC_FILES:
        (root / "html" / name).write_bytes(b"<!DOCTYPE html><html><body>nsmc</body></html>\n")
    (root / DUMP).write_bytes(bz2.compress(dump_xml(PAGES)))
    (root / "truncated.xml.bz2").write_bytes(bz2.compress(dump_xml(PAGES))[:300])
    (root / "nsmc.tar.gz").write_bytes(nsmc_archive(CRAWL))
    (root / "truncated.tar.gz").write_bytes(nsmc_archive(CRAWL)[:200])
    (root / "notnsmc.tar.gz").write_bytes(nsmc_archive({"raw/1.json": {"review": "not a list"}}))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    # stderr may also hold tqdm progress bars; the error itself is the one last line
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert all("%|" in line for line in lines[:-1]), r.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def read_docs(text_dir):
    """[(header line, title line, body lines)] from every wiki_NN file in order."""
    docs = []
    for folder in sorted(os.listdir(text_dir)):
        for name in sorted(os.listdir(os.path.join(text_dir, folder))):
            with open(os.path.join(text_dir, folder, name), encoding="utf-8") as f:
                blocks = f.read().split("</doc>\n")
            assert blocks[-1] == ""  # every file ends right after a </doc>
            for block in blocks[:-1]:
                header, title, blank, *body = block.split("\n")
                # WikiExtractor layout: blank line after the title and before </doc>, none inside
                assert blank == "" and body[-2:] == ["", ""] and "" not in body[:-2], block
                docs.append((header, title, body[:-2]))
    return docs


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    root, url = server
    out = tmp_path_factory.mktemp("out") / "data"
    r = run(
        "--what",
        "all",
        "--output",
        str(out),
        "--nsmc_url",
        url + "/nsmc/",
        "--wiki_url",
        f"{url}/{DUMP}",
        cwd=out.parent,
    )
    assert r.returncode == 0, r.stderr
    return root, url, out, r


def test_nsmc_files_are_byte_identical(downloaded):
    root, _, out, r = downloaded
    for name in download.NSMC_FILES:
        assert (out / name).read_bytes() == (root / "nsmc" / name).read_bytes()
    assert "ratings_train.txt (4 reviews)" in r.stdout
    assert not list(out.glob("*.part"))


def test_kowiki_has_only_articles_with_text(downloaded):
    root, _, out, r = downloaded
    assert (out / DUMP).read_bytes() == (root / DUMP).read_bytes()
    assert sorted(p.relative_to(out / "kowiki").as_posix() for p in (out / "kowiki").rglob("*")) == ["AA", "AA/wiki_00"]
    docs = read_docs(out / "kowiki")
    seen = {}
    for header, title, body in docs:
        m = re.fullmatch(r'<doc id="(\d+)" url="https://ko\.wikipedia\.org/wiki\?curid=(\d+)" title="([^"]*)">', header)
        assert m and m[1] == m[2], header
        assert m[3].replace("&quot;", '"') == title
        seen[m[1]] = title
    assert seen == EXPECTED
    assert "next: python vocab.py --input" in r.stdout and "3 articles in 1 files" in r.stdout


def test_kowiki_markup_is_stripped(downloaded):
    out = downloaded[2]
    docs = {title: body for _, title, body in read_docs(out / "kowiki")}
    text = "\n".join("\n".join(body) for body in docs.values())
    for junk in [
        "{{",
        "}}",
        "[[",
        "]]",
        "<ref",
        "분류:",
        "Category:",
        "파일:",
        "File:",
        "섬네일",
        "thumb",
        "en:",
        "wikitable",
        "||",
        "'''",
        "<!--",
        "&nbsp;",
        "\xa0",
        "__",
        "넘겨주기",
        "토론 문단",
    ]:
        assert junk not in text, junk
    assert docs["지미 카터"] == [
        "지미 카터(James Earl Carter Jr., 1924년 10월 1일 ~ )는 민주당 출신 미국 39대 대통령이다.",
        "생애.",
        "어린 시절.",
        "지미 카터는 조지아주 섬터 카운티 플레인스 마을에서 태어났다.",
    ]
    # the list-only section disappears with its heading; a heading ending in '!' gets no '.'
    assert docs["수학"] == [
        "수학(數學)은 양, 구조, 공간, 변화 등의 개념을 다루는 학문이다.",
        "역사!",
        "고대 이집트와 메소포타미아에서 시작되었다. 그리고 발전했다.",
    ]
    assert docs['"위어드 알" 얀코빅'] == ['"위어드 알" 얀코빅은 미국의 가수이다.']


def test_rerun_without_force_refuses(downloaded):
    _, url, out, _ = downloaded
    before = (out / "kowiki" / "AA" / "wiki_00").read_bytes()
    for what in ["nsmc", "kowiki", "all"]:
        r = run(
            "--what",
            what,
            "--output",
            str(out),
            "--nsmc_url",
            url + "/nsmc/",
            "--wiki_url",
            f"{url}/{DUMP}",
            cwd=out.parent,
        )
        assert_one_line_error(r, "exists; pass --force")
    assert (out / "kowiki" / "AA" / "wiki_00").read_bytes() == before


def test_force_replaces_output(server, tmp_path):
    _, url = server
    args = ["--what", "kowiki", "--output", str(tmp_path), "--wiki_url", f"{url}/{DUMP}"]
    assert run(*args, cwd=tmp_path).returncode == 0
    r = run(*args, "--force", "--max_articles", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [title for _, title, _ in read_docs(tmp_path / "kowiki")] == ["지미 카터"]
    assert not (tmp_path / "kowiki.part").exists()


def test_existing_dump_is_reused(server, tmp_path):
    _, url = server
    (tmp_path / DUMP).write_bytes(bz2.compress(dump_xml(PAGES[1:2])))  # differs from the served dump
    r = run("--what", "kowiki", "--output", str(tmp_path), "--wiki_url", f"{url}/{DUMP}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "using the dump already at" in r.stdout
    assert [title for _, title, _ in read_docs(tmp_path / "kowiki")] == ["수학"]


@pytest.mark.parametrize(
    "what, flag, path", [("nsmc", "--nsmc_url", "/missing/"), ("kowiki", "--wiki_url", "/missing.xml.bz2")]
)
def test_404_is_one_line(server, tmp_path, what, flag, path):
    _, url = server
    r = run("--what", what, "--output", str(tmp_path), flag, url + path, cwd=tmp_path)
    assert_one_line_error(r, url + path, "404", "check your connection", flag)
    assert os.listdir(tmp_path) == []  # no .part, no half-written file


def test_connection_refused_is_one_line(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{DUMP}"
    r = run("--what", "kowiki", "--output", str(tmp_path), "--wiki_url", url, cwd=tmp_path)
    assert_one_line_error(r, url, "--wiki_url")


def test_cut_download_leaves_nothing(server, tmp_path):
    _, url = server
    r = run("--what", "kowiki", "--output", str(tmp_path), "--wiki_url", url + "/cut.xml.bz2", cwd=tmp_path)
    assert_one_line_error(r, url + "/cut.xml.bz2")
    assert os.listdir(tmp_path) == []  # neither the dump nor its .part looks complete afterwards


def test_not_nsmc_is_refused(server, tmp_path):
    _, url = server
    r = run("--what", "nsmc", "--output", str(tmp_path), "--nsmc_url", url + "/html", cwd=tmp_path)
    assert_one_line_error(r, "does not look like NSMC", "--nsmc_url")
    assert os.listdir(tmp_path) == []


def test_truncated_dump_is_one_line(server, tmp_path):
    _, url = server
    r = run("--what", "kowiki", "--output", str(tmp_path), "--wiki_url", url + "/truncated.xml.bz2", cwd=tmp_path)
    assert_one_line_error(r, "truncated.xml.bz2", "not a complete MediaWiki")
    assert not (tmp_path / "kowiki").exists() and not (tmp_path / "kowiki.part").exists()


def test_convert_dump_splits_files_and_caps_articles(tmp_path, monkeypatch):
    body = "본문 문장입니다. " * 40  # ~1 KB per article
    pages = [(i, 0, f"문서 {i}", None, f"{body}\n== 절 ==\n{body}") for i in range(1, 61)]
    dump = tmp_path / DUMP
    dump.write_bytes(bz2.compress(dump_xml(pages, base="https://en.wikipedia.org/wiki/Main_Page")))
    monkeypatch.setattr(download, "FILE_BYTES", 3000)
    monkeypatch.setattr(download, "FILES_PER_DIR", 4)
    articles, files = download.convert_dump(str(dump), str(tmp_path / "out"), max_articles=50)
    assert articles == 50
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("wiki_*"))
    assert len(names) == files and files > 4
    assert names[:6] == ["AA/wiki_00", "AA/wiki_01", "AA/wiki_02", "AA/wiki_03", "AB/wiki_00", "AB/wiki_01"]
    assert all((tmp_path / "out" / n).stat().st_size <= 3000 for n in names)
    docs = read_docs(tmp_path / "out")
    assert [t for _, t, _ in docs] == [f"문서 {i}" for i in range(1, 51)]
    assert docs[0][0] == '<doc id="1" url="https://en.wikipedia.org/wiki?curid=1" title="문서 1">'  # from siteinfo


def test_wikitext_refs_templates_and_links():
    text = (
        "'''서울'''<ref>출처 {{웹 인용|url=x}}</ref>은 {{lang|en|Seoul}}[[대한민국]]의 [[수도 (도시)|수도]]이다."
        "<ref name=a/>\n[[파일:Seoul.jpg|섬네일|서울 [[야경]]]][[en:Seoul]][[분류:도시]]"
    )
    assert download.wikitext_to_paragraphs(text) == ["서울은 대한민국의 수도이다."]


def test_wikitext_headings_wait_for_text():
    text = "머리말.\n== 가 ==\n=== 가1 ===\n=== 가2 ===\n가2 본문\n== 나 ==\n=== 나1 ===\n== 다? ==\n다 본문"
    assert download.wikitext_to_paragraphs(text) == ["머리말.", "가.", "가2.", "가2 본문", "다?", "다 본문"]
    # text under a heading that renders empty does not belong to the heading before it
    assert download.wikitext_to_paragraphs("== 가 ==\n== {{틀}} ==\n본문") == ["본문"]
    assert download.wikitext_to_paragraphs("== 가 ==\n가 본문\n=== 가1 ===\n가1 본문") == [
        "가.",
        "가 본문",
        "가1.",
        "가1 본문",
    ]


def test_wikitext_tables_lists_and_breaks():
    text = (
        '위\n{| class="wikitable"\n|-\n| 셀1 || 셀2\n|}\n<table><tr><td>html 셀</td></tr></table>\n'
        "* 항목\n# 번호\n; 용어 : 정의\n첫 줄<br />둘째 줄 &amp; <math>x^2</math>__목차__\n\n\n끝"
    )
    assert download.wikitext_to_paragraphs(text) == ["위", "첫 줄", "둘째 줄 &", "끝"]


def test_wikitext_nested_refs_and_empty():
    assert download.wikitext_to_paragraphs("'''굵게<ref>각주</ref>''' ''[[링크|기울임<ref>x</ref>]]''") == [
        "굵게 기울임"
    ]
    assert download.wikitext_to_paragraphs("{{틀}}\n[[분류:X]]\n<!-- 주석 -->\n") == []


def test_pages_memory_stays_bounded(tmp_path):
    body = "가나다라마바사 " * 250  # 2 KB of text per page, ~10 MB in all
    path = tmp_path / "big.xml"
    path.write_bytes(dump_xml([(i, 0, f"문서 {i}", None, body) for i in range(1, 5001)]))
    tracemalloc.start()
    with open(path, "rb") as f:
        n = sum(1 for _ in download.pages(f))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 5000
    assert peak < 3_000_000, peak  # keeping every parsed page would hold well over 10 MB


def reviews_args(url, out, *extra):
    return ["--what", "reviews", "--output", str(out), "--nsmc_url", url + "/nsmc/", "--reviews_url", *extra]


def test_reviews_one_per_line_without_the_test_reviews(server, tmp_path):
    _, url = server
    (tmp_path / "exclude.txt").write_text(EXCLUDE, encoding="utf-8")
    out = tmp_path / "data"
    r = run(*reviews_args(url, out, url + "/nsmc.tar.gz", "--exclude", str(tmp_path / "exclude.txt")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = out / "reviews" / "nsmc_unlabeled.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and lines[:-1] == CRAWL_KEPT  # in the crawl's order; no ids, no ratings
    # the test file was fetched first (the output had none), and not one of its texts is in the output
    assert (out / "ratings_test.txt").read_bytes() == NSMC_TEST
    test_texts = {" ".join(line.split("\t")[1].split()) for line in NSMC_TEST.decode().splitlines()[1:]}
    assert not set(lines) & test_texts and download.overlap(str(path), test_texts) == 0
    assert (
        "3 reviews of 8 in 3 files; dropped: 1 with a test id, 3 with the text of a test or --exclude review"
        in r.stdout
    )
    assert "1 empty; exact-text overlap with" in r.stdout and not list(out.rglob("*.part"))
    # without --exclude its review stays; an existing test file is used as it is
    (out / "ratings_test.txt").write_bytes(NSMC_TEST.replace("굳 ㅋ".encode(), "마지막 리뷰".encode()))
    r = run(*reviews_args(url, out, url + "/nsmc.tar.gz", "--force"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert path.read_text(encoding="utf-8").split("\n")[:-1] == [
        "재밌어요 정말 최고",
        "굳 ㅋ",
        "제외할 리뷰",
        "아 더빙.. 진짜 짜증나네요 목소리",
    ]


def test_overlap_check_can_tell(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("가 나\n굳 ㅋ\n다\n", encoding="utf-8")
    assert download.overlap(str(path), {"굳 ㅋ", "없음"}) == 1
    assert download.read_excluded(str(tmp_path / "r.txt")) == (set(), {"가 나", "굳 ㅋ", "다"})
    (tmp_path / "t.txt").write_bytes(NSMC_TEST)
    assert download.read_excluded(str(tmp_path / "t.txt")) == (
        {"6270596", "9274899"},
        {"굳 ㅋ", "GDNTOPCLASSINTHECLUB"},
    )


@pytest.mark.parametrize(
    "name, needles",
    [
        ("missing.tar.gz", ["404", "--reviews_url"]),
        ("nsmc/ratings_train.txt", ["is not a complete e9t/nsmc archive", "--reviews_url"]),  # not an archive
        ("truncated.tar.gz", ["is not a complete e9t/nsmc archive"]),
        ("notnsmc.tar.gz", ["raw/1.json in the archive is not a list of reviews"]),
    ],
)
def test_reviews_errors_are_one_line(server, tmp_path, name, needles):
    _, url = server
    (tmp_path / "ratings_test.txt").write_bytes(NSMC_TEST)
    r = run(*reviews_args(url, tmp_path, f"{url}/{name}"), cwd=tmp_path)
    assert_one_line_error(r, *needles)
    assert sorted(os.listdir(tmp_path)) == ["ratings_test.txt", "reviews"]
    assert os.listdir(tmp_path / "reviews") == []  # no .part, no half-written file


def test_reviews_refuse_to_overwrite_and_missing_exclude(server, tmp_path):
    _, url = server
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "nsmc_unlabeled.txt").write_text("old\n")
    r = run(*reviews_args(url, tmp_path, url + "/nsmc.tar.gz"), cwd=tmp_path)
    assert_one_line_error(r, "nsmc_unlabeled.txt exists; pass --force")
    r = run(*reviews_args(url, tmp_path, url + "/nsmc.tar.gz", "--force", "--exclude", "nope.txt"), cwd=tmp_path)
    assert_one_line_error(r, "nope.txt not found")
    assert (tmp_path / "reviews" / "nsmc_unlabeled.txt").read_text() == "old\n"
    r = run("--what", "nsmc", "--output", str(tmp_path), "--exclude", "nope.txt", cwd=tmp_path)
    assert_one_line_error(r, "--exclude goes with --what reviews")
    (tmp_path / "ratings_test.txt").write_text("굳 ㅋ\n")  # not NSMC's format: its ids would be lost
    r = run(*reviews_args(url, tmp_path, url + "/nsmc.tar.gz", "--force"), cwd=tmp_path)
    assert_one_line_error(r, "ratings_test.txt is not an NSMC file")
    assert (tmp_path / "reviews" / "nsmc_unlabeled.txt").read_text() == "old\n"
