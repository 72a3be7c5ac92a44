"""Download the real data: NSMC reviews and Korean Wikipedia as plain text.

    python download.py                      # both, into data/
    python download.py --what nsmc          # data/ratings_train.txt, data/ratings_test.txt
    python download.py --what kowiki        # data/kowiki/AA/wiki_00, ... (dump is ~1 GB)
    python download.py --what kowiki --max_articles 1000 --output /tmp/d   # quick try
    python download.py --what reviews       # data/reviews/nsmc_unlabeled.txt: the crawl NSMC was drawn from, as text

The Wikipedia dump is parsed as a stream with mwparserfromhell and written in
WikiExtractor's layout and format (<doc ...> blocks, ~1 MB files, 100 per folder),
so corpus.py reads it exactly like the sample in data/sample/.

`--what reviews` streams the e9t/nsmc repository at a fixed commit (one tar.gz) and writes the reviews of
its raw/ crawl (14,730 JSON files, one per movie) one per line, without the reviews of the NSMC test file
(same id, or the same text once whitespace is collapsed) or of any --exclude file; ratings are never written.
"""

import argparse
import bz2
import http.client
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, Tag, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode
from tqdm import tqdm

import errors
from corpus import collapse

NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master/"
NSMC_FILES = ["ratings_train.txt", "ratings_test.txt"]
NSMC_HEADER = b"id\tdocument\tlabel"
WIKI_URL = "https://dumps.wikimedia.org/kowiki/latest/kowiki-latest-pages-articles.xml.bz2"
# The commit of e9t/nsmc whose raw/ holds the crawl: pinned, so every user gets the same reviews. One archive
# of the repository instead of 14,730 requests for the raw/ files (GitHub rate-limits those).
NSMC_COMMIT = "b6232e69290a826104357381560e18adbad23473"
REVIEWS_URL = f"https://codeload.github.com/e9t/nsmc/tar.gz/{NSMC_COMMIT}"
REVIEWS_FILE = os.path.join("reviews", "nsmc_unlabeled.txt")
RAW_JSON = re.compile(r"(?:^|/)raw/\d+\.json$")  # nsmc-<commit>/raw/<movie id>.json in the archive

# Links to these namespaces render as junk ("섬네일|caption", "분류:...") in strip_code.
DROP_LINK_NAMESPACES = {"file", "image", "media", "파일", "그림", "category", "분류"}
# Interlanguage links look like [[en:Title]] or [[zh-min-nan:Title]].
LANG_PREFIX = re.compile(r"[a-z]{2,3}(-[a-z]+)*")
# Tags whose text is not prose: references, tables, formulas, galleries, code.
DROP_TAGS = {
    "ref",
    "references",
    "table",
    "gallery",
    "math",
    "chem",
    "ce",
    "timeline",
    "imagemap",
    "score",
    "graph",
    "syntaxhighlight",
    "source",
    "templatestyles",
}
LIST_MARKUP = {"*", "#", ";", ":"}
LIST_LINE = "\x00"  # marks list items so they can be dropped after strip_code, as WikiExtractor does
MAGIC_WORD = re.compile(r"__[A-Z가-힣]+__")  # __TOC__, __목차__: behavior switches, plain Text to the parser
FILE_BYTES = 1 << 20  # WikiExtractor's default --bytes 1M
FILES_PER_DIR = 100


def fetch(url, path, flag="--wiki_url", expect=None):
    """Stream `url` to `path` via `path.part`, so an interrupted download never looks complete.

    `expect` is a byte prefix the content must start with; checked before anything is written."""
    part = path + ".part"
    try:
        try:
            resp = urllib.request.urlopen(url, timeout=60)
        except ValueError as e:  # "unknown url type"
            raise errors.UserError(f"bad URL {url!r} ({e}); pass a full http(s):// URL with {flag}")
        with resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=os.path.basename(path))
            first, got = True, 0
            with bar:
                while chunk := resp.read(1 << 20):
                    if first and expect is not None and not chunk.startswith(expect):
                        raise errors.UserError(
                            f"{url} does not look like NSMC (first line is not "
                            f"{expect.decode()!r}); pass the raw-file base URL with {flag}"
                        )
                    first = False
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise errors.UserError(
                f"download of {url} stopped after {got} of {total} bytes; check your connection and run again"
            )
        if first and expect is not None:
            raise errors.UserError(f"{url} is empty; pass the raw-file base URL with {flag}")
    except BaseException as e:
        _remove(part)
        if not isinstance(e, (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)):
            raise
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise errors.UserError(f"could not download {url} ({reason}); check your connection or pass {flag}") from None
    os.replace(part, path)
    return path


def _remove(path):
    if os.path.exists(path):
        os.remove(path)


def _dropped_link(link):
    title = str(link.title).strip()
    if ":" not in title:
        return False
    prefix = title.split(":", 1)[0].strip()
    return prefix.lower() in DROP_LINK_NAMESPACES or LANG_PREFIX.fullmatch(prefix) is not None


def _clean(code):
    """Drop non-prose nodes from `code` in place, recursing into what strip_code would render.

    Rebuilding node lists is linear; Wikicode.remove() searches the tree each call (quadratic)."""
    kept = []
    for node in code.nodes:  # templates need no removal: strip_code drops them
        if isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS:
                continue
            if node.wiki_markup in LIST_MARKUP:
                node = Text(LIST_LINE)
            elif tag == "br":
                node = Text("\n")
            elif node.contents:
                _clean(node.contents)
        elif isinstance(node, Wikilink):
            if _dropped_link(node):
                continue
            if node.text:
                _clean(node.text)
        elif isinstance(node, Heading) or (isinstance(node, ExternalLink) and node.title):
            _clean(node.title)
        kept.append(node)
    code.nodes = kept


def _lines(code):
    lines = []
    for line in code.strip_code().split("\n"):
        line = " ".join(MAGIC_WORD.sub("", line).split())  # also turns &nbsp; into a plain space
        if line and not line.startswith(LIST_LINE):
            lines.append(line)
    return lines


def wikitext_to_paragraphs(text):
    """Plain-text lines of an article: paragraphs, and headings as 'Heading.' like WikiExtractor.

    A heading is kept only if text follows it before the next heading of its level or higher."""
    code = mwparserfromhell.parse(text)
    _clean(code)
    sections = [(None, [])]  # (heading, nodes under it); the lead has no heading
    for node in code.nodes:
        if isinstance(node, Heading):
            sections.append((node, []))
        else:
            sections[-1][1].append(node)
    out, pending = [], {}  # pending: level -> heading still waiting for its first paragraph
    for heading, nodes in sections:
        if heading is not None:
            for level in [level for level in pending if level >= heading.level]:
                del pending[level]
            title = " ".join(heading.title.strip_code().split())
            if title:
                pending[heading.level] = title if title[-1] in "!?." else title + "."
        lines = _lines(Wikicode(nodes))
        if lines:
            out += [pending[level] for level in sorted(pending)]
            pending.clear()
            out += lines
    return out


def pages(f, url_base="https://ko.wikipedia.org/wiki"):
    """Yield (id, url, title, wikitext) of articles (namespace 0, not redirects) from a MediaWiki XML stream."""
    ns = ""
    root = None
    for event, elem in ET.iterparse(f, events=("start", "end")):
        if root is None:
            root = elem
            ns = elem.tag[: elem.tag.find("}") + 1]  # "{http://www.mediawiki.org/xml/export-0.11/}"
        if event != "end":
            continue
        if elem.tag == ns + "base" and elem.text:  # siteinfo: https://ko.wikipedia.org/wiki/대문
            url_base = elem.text.rsplit("/", 1)[0]
        elif elem.tag == ns + "page":
            if elem.findtext(ns + "ns") == "0" and elem.find(ns + "redirect") is None:
                pid = elem.findtext(ns + "id")
                text = elem.findtext(f"{ns}revision/{ns}text") or ""
                yield pid, f"{url_base}?curid={pid}", elem.findtext(ns + "title"), text
            root.clear()  # drop finished pages so memory stays bounded


def page_to_doc(page):
    """One WikiExtractor <doc> block, or None when no text is left."""
    pid, url, title, text = page
    try:
        paragraphs = wikitext_to_paragraphs(text)
    except mwparserfromhell.parser.ParserError:
        return None  # one odd article should not sink an hour-long conversion
    if not paragraphs:
        return None
    attr = title.replace('"', "&quot;")
    return f'<doc id="{pid}" url="{url}" title="{attr}">\n{title}\n\n' + "\n".join(paragraphs) + "\n\n</doc>\n"


def _read_pages(dump_path, raw):
    # Only reading happens in here, so these errors mean a bad dump, not a bad disk.
    try:
        with bz2.open(raw) as xml:
            yield from pages(xml)
    except (OSError, EOFError, ET.ParseError) as e:
        raise errors.UserError(
            f"{dump_path} is not a complete MediaWiki .xml.bz2 dump ({e}); "
            f"delete it or pass --force to download it again"
        )


def _docs(dump_path, max_articles, workers):
    """Encoded <doc> blocks of the dump's articles, at most max_articles."""
    articles = 0
    pool = None
    if workers > 1:  # workers ignore Ctrl-C so only the main process reports it
        pool = multiprocessing.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        with (
            open(dump_path, "rb") as f,
            tqdm.wrapattr(
                f, "read", total=os.path.getsize(dump_path), desc="kowiki", unit="B", unit_scale=True, unit_divisor=1024
            ) as raw,
        ):
            it = _read_pages(dump_path, raw)
            # Batches keep memory bounded: Pool.imap would read the whole dump ahead of the workers.
            for batch in iter(lambda: list(itertools.islice(it, 512)), []):
                for doc in pool.map(page_to_doc, batch) if pool else map(page_to_doc, batch):
                    if doc is not None:
                        yield doc.encode("utf-8")
                        articles += 1
                        if articles == max_articles:
                            return
    finally:
        if pool is not None:
            pool.terminate()


def write_split(docs, out_dir):
    """Write docs into out_dir/AA/wiki_00, wiki_01, ..., AB/wiki_00, ... like WikiExtractor; returns (docs, files).

    A file takes docs until the next one would push it past FILE_BYTES."""
    count = files = 0
    doc = next(docs, None)
    while doc is not None:
        d, n = divmod(files, FILES_PER_DIR)
        folder = os.path.join(out_dir, chr(ord("A") + d // 26 % 26) + chr(ord("A") + d % 26))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"wiki_{n:02d}"), "wb") as f:
            while doc is not None and (f.tell() == 0 or f.tell() + len(doc) <= FILE_BYTES):
                f.write(doc)
                count += 1
                doc = next(docs, None)
        files += 1
    return count, files


def convert_dump(dump_path, out_dir, max_articles=None, workers=1):
    """Convert a pages-articles .xml.bz2 dump into WikiExtractor-style text in out_dir; returns (articles, files)."""
    errors.require_file(dump_path)
    return write_split(_docs(dump_path, max_articles, workers), out_dir)


def read_excluded(path, nsmc_only=False):
    """(ids, texts) of a file whose reviews must not be written: NSMC's `id document label` (with its header),
    or one review per line (unless nsmc_only). Texts are whitespace-collapsed; empty ones are left out."""
    errors.require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise errors.UserError(f"{path} is not UTF-8 text; pass NSMC's ratings_*.txt or one review per line") from None
    nsmc = bool(lines) and lines[0].encode() == NSMC_HEADER
    if nsmc_only and not nsmc:
        raise errors.UserError(f"{path} is not an NSMC file (no `id document label` header); delete it to download it")
    ids, texts = set(), set()
    for line in lines[1:] if nsmc else lines:
        if nsmc:
            rid, _, rest = line.partition("\t")
            ids.add(rid)
            line = rest.rpartition("\t")[0]  # the document, between the id and the label
        if text := collapse(line):
            texts.add(text)
    return ids, texts


def crawl_reviews(stream, counts):
    """Yield (review id, text) of each review in the raw/*.json files of the e9t/nsmc tar.gz `stream`, in the
    archive's order (movie by movie); counts["files"] counts the files. The ratings are never read."""
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            if not (member.isfile() and RAW_JSON.search(member.name)):
                continue
            counts["files"] += 1
            data = json.load(tar.extractfile(member))
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise errors.UserError(f"{member.name} in the archive is not a list of reviews; is it e9t/nsmc?")
            for r in data:
                yield str(r.get("review_id", "")), str(r.get("review") or "")


def write_reviews(reviews, path, drop_ids, drop_texts):
    """Write each review's collapsed text on a line of its own, without empty ones and the dropped ids and texts;
    -> counts of what was written and dropped."""
    counts = {"crawl": 0, "written": 0, "empty": 0, "test_id": 0, "text": 0}
    with open(path, "w", encoding="utf-8") as f:
        for rid, text in reviews:
            counts["crawl"] += 1
            text = collapse(text)
            key = "empty" if not text else "test_id" if rid in drop_ids else "text" if text in drop_texts else "written"
            counts[key] += 1
            if key == "written":
                f.write(text + "\n")
    return counts


def overlap(path, texts):
    """How many lines of `path` are one of `texts`: the check that no excluded review got through."""
    with open(path, encoding="utf-8") as f:
        return sum(line.rstrip("\n") in texts for line in f)


def download_reviews(url, path, test_path, exclude):
    """The crawl at `url` -> `path` (via path.part), without the reviews of `test_path` and of `exclude`; -> counts."""
    drop_ids, drop_texts = read_excluded(test_path, nsmc_only=True)
    test_texts = set(drop_texts)
    for extra in exclude:
        drop_texts |= read_excluded(extra)[1]  # their texts only: ids are the NSMC test file's business
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part = path + ".part"
    stats = {"files": 0}
    try:
        with open_url(url, "--reviews_url") as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm.wrapattr(resp, "read", total=total, desc="nsmc raw/", unit="B", unit_scale=True) as raw:
                counts = write_reviews(crawl_reviews(raw, stats), part, drop_ids, drop_texts)
        if stats["files"] == 0:
            raise errors.UserError(f"{url} has no raw/*.json files; pass the e9t/nsmc archive with --reviews_url")
        # checked on what was written, not on what the loop meant to write
        if n := overlap(part, test_texts):
            raise RuntimeError(f"{n} reviews of {test_path} got into {part}")
    except BaseException as e:
        _remove(part)
        if isinstance(e, (tarfile.TarError, zlib.error, EOFError, json.JSONDecodeError, UnicodeDecodeError)):
            raise errors.UserError(
                f"{url} is not a complete e9t/nsmc archive ({type(e).__name__}: {e}); "
                f"pass the repository's tar.gz with --reviews_url"
            ) from None
        if isinstance(e, (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)):
            raise errors.UserError(f"download of {url} stopped ({e}); check your connection and run again") from None
        raise
    os.replace(part, path)
    return {**counts, **stats}


def open_url(url, flag):
    """urlopen with its failures as one-line errors that name `flag`."""
    try:
        return urllib.request.urlopen(url, timeout=60)
    except ValueError as e:  # "unknown url type"
        raise errors.UserError(f"bad URL {url!r} ({e}); pass a full http(s):// URL with {flag}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise errors.UserError(f"could not download {url} ({reason}); check your connection or pass {flag}") from None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", choices=["nsmc", "kowiki", "reviews", "all"], default="all", help="all: nsmc and kowiki")
    p.add_argument("--output", default="data", help="folder to write into")
    p.add_argument("--nsmc_url", default=NSMC_URL, help="base URL holding ratings_train.txt and ratings_test.txt")
    p.add_argument("--wiki_url", default=WIKI_URL, help="URL of a MediaWiki pages-articles .xml.bz2 dump")
    p.add_argument("--reviews_url", default=REVIEWS_URL, help="tar.gz of the e9t/nsmc repository (its raw/ crawl)")
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        help="with --what reviews: also drop the reviews of these files (NSMC format or one review per line); "
        "the NSMC test file OUTPUT/ratings_test.txt is always dropped (downloaded first when missing)",
    )
    p.add_argument("--max_articles", type=int, default=None, help="stop after this many articles (for testing)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes parsing wikitext")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs and download the dump again")
    args = p.parse_args()
    if args.max_articles is not None and args.max_articles < 1:
        raise errors.UserError("--max_articles must be at least 1")
    if args.workers < 1:
        raise errors.UserError("--workers must be at least 1")

    nsmc = args.what in ("nsmc", "all")
    wiki = args.what in ("kowiki", "all")
    reviews = args.what == "reviews"
    text_dir = os.path.join(args.output, "kowiki")
    reviews_path = os.path.join(args.output, REVIEWS_FILE)
    targets = ([os.path.join(args.output, name) for name in NSMC_FILES] if nsmc else []) + ([text_dir] if wiki else [])
    targets += [reviews_path] if reviews else []
    if args.exclude and not reviews:
        raise errors.UserError("--exclude goes with --what reviews")
    for path in args.exclude:
        errors.require_file(path)
    # Check everything first so `--what all` never stops halfway on an existing file.
    for path in targets:
        if os.path.exists(path) and not args.force:
            raise errors.UserError(f"{path} exists; pass --force to overwrite it")
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise errors.UserError(f"cannot create {args.output} ({e.strerror})")

    written = []
    if nsmc:
        for name in NSMC_FILES:
            path = os.path.join(args.output, name)
            fetch(args.nsmc_url.rstrip("/") + "/" + name, path, flag="--nsmc_url", expect=NSMC_HEADER)
            with open(path, "rb") as f:
                rows = sum(1 for _ in f) - 1
            written.append(f"{path} ({rows:,} reviews)")
    if wiki:
        dump = os.path.join(args.output, os.path.basename(args.wiki_url.split("?")[0]) or "wiki.xml.bz2")
        if os.path.exists(dump) and not args.force:
            print(f"using the dump already at {dump} (--force downloads it again)")
        else:
            fetch(args.wiki_url, dump, flag="--wiki_url")
        # Convert into a .part folder so an interrupted run never leaves a half-written corpus behind.
        part = text_dir + ".part"
        shutil.rmtree(part, ignore_errors=True)
        articles, files = convert_dump(dump, part, args.max_articles, args.workers)
        if articles == 0:
            shutil.rmtree(part, ignore_errors=True)
            raise errors.UserError(f"no articles found in {dump}; is it a pages-articles dump?")
        shutil.rmtree(text_dir, ignore_errors=True)
        os.replace(part, text_dir)
        written.append(f"{dump} (dump)")
        written.append(f"{text_dir}/ ({articles:,} articles in {files} files)")

    if reviews:
        test_path = os.path.join(args.output, "ratings_test.txt")
        if not os.path.exists(test_path):
            fetch(args.nsmc_url.rstrip("/") + "/ratings_test.txt", test_path, flag="--nsmc_url", expect=NSMC_HEADER)
            written.append(f"{test_path} (the NSMC test file, whose reviews are left out)")
        c = download_reviews(args.reviews_url, reviews_path, test_path, args.exclude)
        written.append(
            f"{reviews_path} ({c['written']:,} reviews of {c['crawl']:,} in {c['files']:,} files; dropped: "
            f"{c['test_id']:,} with a test id, {c['text']:,} with the text of a test"
            + (" or --exclude" if args.exclude else "")
            + f" review, {c['empty']:,} empty; exact-text overlap with {test_path}: 0)"
        )

    print("wrote:")
    for w in written:
        print(f"  {w}")
    print(f"next: python vocab.py --input {reviews_path if reviews else text_dir}")


if __name__ == "__main__":
    errors.main_guard(main)
