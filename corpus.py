"""Reading text input: documents as lists of paragraphs, paragraphs split into sentences.

Used by vocab.py and data.py; not a script. Accepted input:
  - a directory, walked recursively in sorted order, hidden files and folders skipped
    (a WikiExtractor output dir like AA/wiki_00, or a dir of .txt.xz files);
  - one WikiExtractor file (`<doc id=.. url=.. title=..>`, title line, paragraphs, `</doc>`);
  - plain text, one paragraph per line, a blank line between documents.
Each file may be plain, .gz, .xz or .bz2 and is read as a stream, never whole into memory.
The format is detected per file: WikiExtractor when its first non-empty line starts with `<doc `.

    from corpus import iter_documents, split_sentences
    for doc in iter_documents("data/sample/kowiki-sample.txt.xz"):
        for paragraph in doc:
            sentences = split_sentences(paragraph)
"""

import bz2
import gzip
import itertools
import lzma
import os
import re

from errors import UserError

OPENERS = {".gz": gzip.GzipFile, ".xz": lzma.LZMAFile, ".bz2": bz2.BZ2File}

# WikiExtractor keeps section titles as their own line with a '.' appended ("생애.",
# "어린 시절.", "원자(原子)와 원소(元素)."). They are not sentences, so drop a line when it is:
# at most 30 characters, ends in '.', has no other '.', '!' or '?', and does not end in "다."
# (the declarative ending of nearly every Korean sentence, so short real sentences like
# "그는 1924년에 태어났다." are kept).
HEADING_MAX_CHARS = 30


def is_heading(line):
    return (
        len(line) <= HEADING_MAX_CHARS
        and line.endswith(".")
        and not line.endswith("다.")
        and not any(c in line[:-1] for c in ".!?")
    )


# Heuristic sentence split: after '.', '!' or '?' (and any closing quotes/brackets right after
# it) followed by whitespace. It also splits after abbreviations and list numbers ("1. 개요"),
# and never splits "5.17" or "3.14" because no space follows the dot. Good enough for
# pretraining, where a wrong boundary only moves where an A/B split may fall.
SENTENCE_END = re.compile(r"([.!?][\"'”’)\]}»」』]*)\s+")


def split_sentences(paragraph):
    return [s for s in SENTENCE_END.sub("\\1\n", paragraph.strip()).split("\n") if s]


def iter_documents(path):
    """Yield documents (lists of non-empty paragraph strings) from a file or directory."""
    # Checked here, not inside the generator, so a bad path fails at the call, before any work.
    if not os.path.exists(path):
        raise UserError(
            f"{path} not found; run `python download.py` to fetch the corpus, or use the sample in data/sample/"
        )
    return _iter_documents(path)


def _iter_documents(path):
    for file in iter_files(path):
        try:
            with open_binary(file) as f:
                yield from documents_in(text_lines(f, file))
        except (EOFError, lzma.LZMAError, OSError) as e:
            raise UserError(f"cannot read {file}: {e}") from None


def iter_files(path):
    if not os.path.isdir(path):
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # in place: steers os.walk
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def collapse(text):
    """A review as reviews are compared (test-set leak checks) and written: runs of whitespace one space."""
    return " ".join(text.split())


def open_binary(path):
    return OPENERS.get(os.path.splitext(path)[1], open)(path, "rb")


def text_lines(f, path):
    """The lines of the binary file f as text, decoded one by one so that a byte that is not UTF-8 is named by
    its line. A byte-order mark must not hide a leading "<doc " from format detection: it is dropped."""
    for n, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{path} is not UTF-8 text: line {n}, byte {e.start + 1} of the line ({e.reason}); convert it, "
                f"e.g. `iconv -f cp949 -t utf-8`"
            ) from None
        yield line[1:] if n == 1 and line.startswith("\ufeff") else line


def documents_in(lines):
    lines = iter(lines)
    for first in lines:
        if first.strip():
            break
    else:
        return  # empty file
    lines = itertools.chain([first], lines)
    if first.lstrip().startswith("<doc "):
        yield from wikiextractor_documents(lines)
    else:
        yield from plain_documents(lines)


def wikiextractor_documents(lines):
    # Blank lines occur inside articles, so only the tags delimit documents.
    doc, want_title = None, False
    for line in lines:
        line = line.strip()
        if line.startswith("<doc "):
            if doc:
                yield doc
            doc, want_title = [], True
        elif line == "</doc>":
            if doc:
                yield doc
            doc = None
        elif not line or doc is None:
            continue  # text outside <doc> tags belongs to no article
        elif want_title:
            want_title = False  # the title repeats the tag's title= and is not prose
        elif not is_heading(line):
            doc.append(line)
    if doc:
        yield doc


def plain_documents(lines):
    doc = []
    for line in lines:
        line = line.strip()
        # Stray doc tags in a plain file still end a document and never reach the output.
        if line and not (line.startswith("<doc ") or line == "</doc>"):
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc
