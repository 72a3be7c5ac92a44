"""Download the real data: NSMC reviews and Korean Wikipedia as plain text.

    python download.py                      # both, into data/
    python download.py --what nsmc          # data/ratings_train.txt, data/ratings_test.txt
    python download.py --what kowiki        # data/kowiki/AA/wiki_00, ... (dump is ~1 GB)
    python download.py --what kowiki --max_articles 1000 --output /tmp/d   # quick try

The Wikipedia dump is parsed as a stream with mwparserfromhell and written in
WikiExtractor's layout and format (<doc ...> blocks, ~1 MB files, 100 per folder),
so corpus.py reads it exactly like the sample in data/sample/.
"""

import argparse
import bz2
import http.client
import itertools
import multiprocessing
import os
import re
import shutil
import signal
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, Tag, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode
from tqdm import tqdm

import errors

NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master/"
NSMC_FILES = ["ratings_train.txt", "ratings_test.txt"]
NSMC_HEADER = b"id\tdocument\tlabel"
WIKI_URL = "https://dumps.wikimedia.org/kowiki/latest/kowiki-latest-pages-articles.xml.bz2"

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", choices=["nsmc", "kowiki", "all"], default="all")
    p.add_argument("--output", default="data", help="folder to write into")
    p.add_argument("--nsmc_url", default=NSMC_URL, help="base URL holding ratings_train.txt and ratings_test.txt")
    p.add_argument("--wiki_url", default=WIKI_URL, help="URL of a MediaWiki pages-articles .xml.bz2 dump")
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
    text_dir = os.path.join(args.output, "kowiki")
    targets = ([os.path.join(args.output, name) for name in NSMC_FILES] if nsmc else []) + ([text_dir] if wiki else [])
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

    print("wrote:")
    for w in written:
        print(f"  {w}")
    print(f"next: python vocab.py --input {text_dir}")


if __name__ == "__main__":
    errors.main_guard(main)
