"""Whole documents of the language-modelling corpora PG-19 and WikiText-103, from the hub or from local files.

Each reader takes a `source`: "hub" (the Hugging Face hub), "embedded" (the offline stand-ins of `memlm.assets`,
prepared by the DataModules' `prepare_data` or `python -m memlm.assets`), or a local folder in the corpus's original
layout:

- PG-19: `train/`, `validation/`, `test/` of `<book id>.txt`, plus `metadata.csv` without a header row, columns
  `_id,short_book_title,publication_date,url` (books it does not list are titled by their id).
- WikiText-103: `wiki.train.raw`, `wiki.valid.raw`, `wiki.test.raw` (the raw variant). An article starts at a line
  ` = Title = `; ` = = Section = = ` lines are sections inside it.

Splits are "train", "validation" and "test" for both. Documents come lazily in file order (PG-19 folders sorted
by book id, so runs are reproducible), and `limit` stops after that many. A missing folder, split or file is
reported when the reader is called; a file's content is checked when its documents are reached. `CORPORA`, at the
end, is the registry: one row per corpus.
"""

import csv
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memlm import assets

SPLITS = ("train", "validation", "test")
PG19_HUB = "emozilla/pg19"
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-103-raw-v1")
PG19_METADATA_COLUMNS = ("_id", "short_book_title", "publication_date", "url")
PG19_LAYOUT = "train/, validation/, test/ of <book id>.txt plus a header-less metadata.csv"
# WikiText's file names say "valid" for the validation split.
WIKITEXT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
WIKITEXT_LAYOUT = f"{', '.join(WIKITEXT_FILES.values())} (the raw variant, not wiki.*.tokens)"

PG19_HUB_FIX = (f"without the hub, pass a local folder in PG-19's layout ({PG19_LAYOUT}) as the source; "
                "deepmind/pg19 is no alternative: it is script-based and recent `datasets` no longer run scripts")
WIKITEXT_HUB_FIX = ("without the hub, pass a local folder holding WikiText-103's raw files "
                    f"{', '.join(WIKITEXT_FILES.values())} as the source")

# Exactly one "=" on each side: " = = Section = = " lines are sections inside an article, not new articles.
_ARTICLE_HEADING = re.compile(r"^ = (?!=)(.+?)(?<!=) = $")
_TRAILING_NUMBER = re.compile(r"(\d+)/?$")


@dataclass(frozen=True)
class Document:
    id: str  # PG-19 book id / WikiText article title
    title: str
    text: str


def pg19(source: str, split: str, limit: int | None = None) -> Iterator[Document]:
    """PG-19 books of `split`: `source` is "hub" (emozilla/pg19, streamed), "embedded" or a folder in PG-19's layout."""
    _check_request(split, limit)
    books = _pg19_hub(split) if source == "hub" else _pg19_folder(pg19_root(source), split)
    return itertools.islice(books, limit)


def wikitext103(source: str, split: str, limit: int | None = None) -> Iterator[Document]:
    """WikiText-103 articles of `split`: `source` is "hub", "embedded" or a folder holding the `wiki.*.raw` files."""
    _check_request(split, limit)
    if source == "hub":
        rows = _hub_rows(f"{WIKITEXT_HUB[0]} config {WIKITEXT_HUB[1]!r} split {split!r}", WIKITEXT_HUB_FIX,
                         *WIKITEXT_HUB, split=split)
        articles = _articles((_raw_line(row["text"]) for row in rows), f"{WIKITEXT_HUB[0]} split {split!r}")
    else:
        file = _wikitext_file(wikitext_root(source), split)
        articles = _articles(_utf8_lines(file), str(file))
    return itertools.islice(articles, limit)


def read_utf8(file: Path) -> str:
    """The text of `file`, which must be UTF-8; a leading byte-order mark (some Gutenberg files have one) is dropped."""
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise _not_utf8(file, f"byte {error.start}: {error.reason}") from error


def _not_utf8(file: Path, detail: str) -> ValueError:
    return ValueError(f"{file} is not UTF-8 ({detail}); re-encode it, e.g. `iconv -f latin1 -t utf-8`")


def _check_request(split: str, limit: int | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None (every document) or a count >= 0, not {limit}")


# ---------------------------------------------------------------------------------------------- hub


def _hub_rows(what: str, fix: str, *args: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The rows of `datasets.load_dataset(*args, **kwargs)`; any hub failure names `what` and how to do without."""
    from datasets import load_dataset  # a slow import, needed by the hub sources only

    try:
        rows = load_dataset(*args, **kwargs)
    except Exception as error:  # the hub fails in many ways; each means the same to the user
        raise _hub_error(what, fix, error) from error
    return _hub_guarded(rows, what, fix)


def _hub_guarded(rows: Iterable[dict[str, Any]], what: str, fix: str) -> Iterator[dict[str, Any]]:
    # A streamed dataset downloads while it is iterated, so the hub can fail here as well.
    try:
        yield from rows
    except Exception as error:
        raise _hub_error(what, fix, error) from error


def _hub_error(what: str, fix: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"could not load {what} from the Hugging Face hub: {error}; {fix}")


def _pg19_hub(split: str) -> Iterator[Document]:
    # PG-19 is 11 GB: streaming reads only the books asked for.
    rows = _hub_rows(f"{PG19_HUB} split {split!r}", PG19_HUB_FIX, PG19_HUB, split=split, streaming=True)
    return (_pg19_record(index, row) for index, row in enumerate(rows))


def _pg19_record(index: int, row: dict[str, Any]) -> Document:
    """A hub record as a book; its id is the Gutenberg number that ends its url, else its position."""
    number = _TRAILING_NUMBER.search(row.get("url") or "")
    return Document(id=number.group(1) if number else str(index), title=row["short_book_title"], text=row["text"])


def _raw_line(row_text: str) -> str:
    """A hub row as the line of the raw file: the hub stores the file's blank lines (" ") as empty rows."""
    return row_text if row_text.strip() else " \n"


# ---------------------------------------------------------------------------------------------- PG-19 folders


def pg19_root(source: str) -> Path:
    if source == "embedded":
        return assets.folder(CORPORA["pg19"].embedded_asset)
    return Path(source).expanduser()


def _pg19_folder(root: Path, split: str) -> Iterator[Document]:
    if not root.is_dir():
        raise FileNotFoundError(f"PG-19 folder {root} does not exist; give a folder in PG-19's layout "
                                f"({PG19_LAYOUT}), or 'hub'")
    folder = root / split
    if not folder.is_dir():
        present = [name for name in SPLITS if (root / name).is_dir()]
        raise FileNotFoundError(f"{root} is a folder without the expected splits: it has no {split}/ (splits there: "
                                f"{', '.join(present) or 'none'}); PG-19's layout is {PG19_LAYOUT}")
    books = sorted(folder.glob("*.txt"), key=_book_order)
    if not books:
        raise ValueError(f"{folder} holds no <book id>.txt files; put one UTF-8 .txt file per book there")
    titles = _pg19_titles(root / "metadata.csv")
    return (_pg19_book(book, titles) for book in books)


def _book_order(file: Path) -> tuple[bool, int, str]:
    # Gutenberg ids are numbers: 105 before 1342, as in the catalogue; any other names after them, alphabetically.
    return (not file.stem.isdigit(), int(file.stem) if file.stem.isdigit() else 0, file.stem)


def _pg19_titles(metadata: Path) -> dict[str, str]:
    """Book id -> short title, from PG-19's metadata.csv; without the file, no titles."""
    if not metadata.is_file():
        return {}
    titles = {}
    reader = csv.reader(io.StringIO(read_utf8(metadata), newline=""))
    for row in reader:
        if not row:
            continue  # a blank line, e.g. at the end of the file
        if len(row) != len(PG19_METADATA_COLUMNS):
            raise ValueError(f"{metadata}:{reader.line_num}: {len(row)} columns, expected "
                             f"{len(PG19_METADATA_COLUMNS)} ({','.join(PG19_METADATA_COLUMNS)}, no header row); "
                             "put titles that hold commas in double quotes")
        titles[row[0]] = row[1]
    return titles


def _pg19_book(file: Path, titles: dict[str, str]) -> Document:
    text = read_utf8(file)
    if not text.strip():
        raise ValueError(f"{file} is an empty book; restore its text or delete the file")
    return Document(id=file.stem, title=titles.get(file.stem, file.stem), text=text)


# ---------------------------------------------------------------------------------------------- WikiText files


def wikitext_root(source: str) -> Path:
    if source == "embedded":
        return assets.folder(CORPORA["wikitext103"].embedded_asset)
    return Path(source).expanduser()


def _wikitext_file(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"WikiText-103 folder {root} does not exist; give a folder holding "
                                f"{WIKITEXT_LAYOUT}, or 'hub'")
    file = root / WIKITEXT_FILES[split]
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: the {split} split of WikiText-103; "
                                f"the folder must hold {WIKITEXT_LAYOUT}")
    return file


def _utf8_lines(file: Path) -> Iterator[str]:
    """The lines of `file` with their line ends, read lazily: WikiText-103's training file is 540 MB."""
    try:
        # newline="" keeps each line's end as it is in the file, so that documents keep the file's text.
        with file.open(encoding="utf-8-sig", newline="") as lines:
            yield from lines
    except UnicodeDecodeError as error:
        raise _not_utf8(file, error.reason) from error


def _articles(lines: Iterable[str], origin: str) -> Iterator[Document]:
    """WikiText articles: each heading line ` = Title = ` with every line up to the next heading, unchanged."""
    title: str | None = None
    article: list[str] = []
    for line_number, line in enumerate(lines, start=1):
        if heading := _ARTICLE_HEADING.match(line.rstrip("\r\n")):
            if title is not None:
                yield Document(id=title, title=title, text="".join(article))
            title, article = heading.group(1), []
        elif title is None:
            if line.strip():
                raise ValueError(f"{origin}:{line_number}: text before any article heading ' = Title = '; "
                                 "WikiText-103 raw files open every article with one")
            continue  # the blank line that opens the file
        article.append(line)
    if title is None:
        raise ValueError(f"{origin} has no article heading ' = Title = '; give a WikiText-103 raw file, "
                         "in which every article opens with one")
    yield Document(id=title, title=title, text="".join(article))


# ---------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Corpus:
    """What memlm knows of one corpus: how to read it, where a source's files are, and how much to take of it."""

    name: str
    read: Callable[[str, str, int | None], Iterator[Document]]
    """(source, split, limit) -> documents, for a source "hub", "embedded" or a folder in the corpus's layout."""
    root: Callable[[str], Path]
    """The local folder of a source ("embedded" or a path)."""
    layout: str
    """The local layout, as errors state it."""
    embedded_asset: str
    """The `memlm.assets` name of the offline stand-in that source "embedded" reads."""
    background_hub_documents: int
    """Documents streamed from the hub when the corpus is background text for the fact tasks: more than any run
    draws, and streaming stops there instead of reading the whole corpus (PG-19 is 11 GB)."""

    def required_assets(self, source: str) -> list[str]:
        """The offline assets (`memlm.assets` names) that reading `source` needs: the stand-in for "embedded"."""
        return [self.embedded_asset] if source == "embedded" else []


CORPORA: dict[str, Corpus] = {
    "pg19": Corpus("pg19", pg19, pg19_root, PG19_LAYOUT, "austen", 200),  # 200 books: about 14M words
    # The same budget in articles (about 3,600 words each) instead of tokenizing all 100M words at start.
    "wikitext103": Corpus("wikitext103", wikitext103, wikitext_root, WIKITEXT_LAYOUT, "wikipedia", 4000),
}


def corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise ValueError(f"data.corpus={name!r} is not one of {tuple(CORPORA)}")
    return CORPORA[name]
