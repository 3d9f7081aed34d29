"""PG-19 and WikiText-103 readers: small files in the exact formats, a faked hub, and the real stand-ins."""

import dataclasses
import re
import sys
import types

import pytest

from memlm.data.background import load_documents
from memlm.data.corpora import CORPORA, Document, pg19, wikitext103

# The original release's metadata.csv has no header row; titles holding commas are quoted.
PG19_METADATA = """10,The King James Version of the Bible,1611,http://www.gutenberg.org/ebooks/10
2,"Poems, Volume 1",1850,http://www.gutenberg.org/ebooks/2
3,The Validation Book,1900,http://www.gutenberg.org/ebooks/3
4,The Test Book,1901,http://www.gutenberg.org/ebooks/4
"""
PG19_BOOKS = {
    "train": {"10": "In the beginning.\n", "2": "\ufeffA first poem.\n", "7": "A book missing from the metadata.\n"},
    "validation": {"3": "A validation book.\n"},
    "test": {"4": "A test book.\n"},
}

# As in the real raw files: every line starts with a space, blank lines are " ", a blank line opens the file and
# comes before every heading; " = = Section = = " lines belong to the article above them.
VALKYRIA = (
    " = Valkyria Chronicles III = \n"
    " \n"
    " Senjō no Valkyria 3 is a tactical role @-@ playing video game . \n"
    " \n"
    " = = Gameplay = = \n"
    " \n"
    " As with previous games , the player leads a squad . \n"
    " \n"
    " = = = Combat = = = \n"
    " \n"
    " Units take turns . \n"
    " \n"
)
TOWER = (
    " = Tower Building of the Little Rock Arsenal = \n"
    " \n"
    " The Tower Building is a building in Little Rock , Arkansas . \n"
    " \n"
)
WIKI_FILES = {
    "wiki.train.raw": " \n" + VALKYRIA + TOWER,
    "wiki.valid.raw": " \n = Robert Boulter = \n \n Robert Boulter is an English actor . \n \n",
    "wiki.test.raw": " \n = Homarus gammarus = \n \n Homarus gammarus is a species of lobster . \n \n",
}


@pytest.fixture
def pg19_folder(tmp_path):
    root = tmp_path / "pg19"
    for split, books in PG19_BOOKS.items():
        (root / split).mkdir(parents=True)
        for book_id, text in books.items():
            (root / split / f"{book_id}.txt").write_text(text, encoding="utf-8")
    (root / "metadata.csv").write_text(PG19_METADATA, encoding="utf-8")
    return root


@pytest.fixture
def wiki_folder(tmp_path):
    root = tmp_path / "wikitext-103-raw"
    root.mkdir()
    for name, text in WIKI_FILES.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def fake_datasets(monkeypatch, rows_by_repo):
    """Replace the `datasets` package by one whose load_dataset records its arguments and returns `rows_by_repo`."""
    requests = []

    def load_dataset(*args, **kwargs):
        requests.append((args, kwargs))
        rows = rows_by_repo[args[0]]
        return rows() if callable(rows) else rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return requests


def hub_lines(raw_text):
    """WikiText's hub rows: one per line of the raw file, each blank line (" ") stored as an empty row."""
    return [{"text": line if line.strip() else ""} for line in raw_text.splitlines(keepends=True)]


# ---------------------------------------------------------------------------------------------- PG-19 folders


def test_pg19_folder_gives_books_in_id_order_titled_from_the_metadata(pg19_folder):
    assert list(pg19(str(pg19_folder), "train")) == [
        Document("2", "Poems, Volume 1", "A first poem.\n"),
        Document("7", "7", "A book missing from the metadata.\n"),
        Document("10", "The King James Version of the Bible", "In the beginning.\n"),
    ]
    assert list(pg19(str(pg19_folder), "validation")) == [Document("3", "The Validation Book", "A validation book.\n")]
    assert list(pg19(str(pg19_folder), "test")) == [Document("4", "The Test Book", "A test book.\n")]


def test_pg19_folder_reads_lazily_and_stops_at_the_limit(pg19_folder):
    (pg19_folder / "train" / "99.txt").write_bytes("caf\xe9".encode("latin-1"))

    assert [book.id for book in pg19(str(pg19_folder), "train", limit=2)] == ["2", "7"]
    assert list(pg19(str(pg19_folder), "train", limit=0)) == []
    with pytest.raises(ValueError, match="not UTF-8"):
        list(pg19(str(pg19_folder), "train"))


def test_pg19_folder_without_metadata_titles_books_by_id(pg19_folder):
    (pg19_folder / "metadata.csv").unlink()

    assert [(book.id, book.title) for book in pg19(str(pg19_folder), "train")] == [("2", "2"), ("7", "7"), ("10", "10")]


def test_pg19_names_a_missing_folder_or_split(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"PG-19 folder .*nowhere does not exist.*train/, validation/, test/"):
        pg19(str(tmp_path / "nowhere"), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"without the expected splits: it has no test/ \(splits there: train"):
        pg19(str(tmp_path), "test")
    with pytest.raises(ValueError, match=r"holds no <book id>\.txt files"):
        pg19(str(tmp_path), "train")


def test_pg19_rejects_an_unknown_split_or_a_negative_limit(pg19_folder):
    with pytest.raises(ValueError, match="unknown split 'valid'; expected one of train, validation, test"):
        pg19(str(pg19_folder), "valid")
    with pytest.raises(ValueError, match="limit must be None"):
        pg19(str(pg19_folder), "train", limit=-1)


def test_pg19_names_an_empty_book(pg19_folder):
    empty = pg19_folder / "test" / "5.txt"
    empty.write_text(" \n\n", encoding="utf-8")

    with pytest.raises(ValueError, match=re.escape(f"{empty} is an empty book")):
        list(pg19(str(pg19_folder), "test"))


def test_pg19_names_a_book_that_is_not_utf8(pg19_folder):
    (pg19_folder / "test" / "5.txt").write_bytes("Caf\xe9 society.".encode("latin-1"))

    with pytest.raises(ValueError, match=r"test/5\.txt is not UTF-8 \(byte 3.*iconv"):
        list(pg19(str(pg19_folder), "test"))


def test_pg19_names_the_metadata_line_with_the_wrong_columns(pg19_folder):
    metadata = pg19_folder / "metadata.csv"
    metadata.write_text("10,The Bible,1611,http://www.gutenberg.org/ebooks/10\n2,Poems, Volume 1,1850,url\n")

    with pytest.raises(ValueError, match=re.escape(f"{metadata}:2: 5 columns, expected 4 (_id,short_book_title")):
        pg19(str(pg19_folder), "train")


# ---------------------------------------------------------------------------------------------- WikiText files


def test_wikitext_folder_splits_articles_at_titles_and_keeps_the_text(wiki_folder):
    articles = list(wikitext103(str(wiki_folder), "train"))

    assert articles == [
        Document("Valkyria Chronicles III", "Valkyria Chronicles III", VALKYRIA),
        Document("Tower Building of the Little Rock Arsenal", "Tower Building of the Little Rock Arsenal", TOWER),
    ]
    assert " \n" + "".join(article.text for article in articles) == WIKI_FILES["wiki.train.raw"]


def test_wikitext_maps_validation_to_the_valid_file_and_stops_at_the_limit(wiki_folder):
    assert [article.id for article in wikitext103(str(wiki_folder), "validation")] == ["Robert Boulter"]
    assert [article.id for article in wikitext103(str(wiki_folder), "test")] == ["Homarus gammarus"]
    assert [article.id for article in wikitext103(str(wiki_folder), "train", limit=1)] == ["Valkyria Chronicles III"]


def test_wikitext_names_a_missing_folder_or_split_file(wiki_folder):
    with pytest.raises(FileNotFoundError, match=r"WikiText-103 folder .*nowhere does not exist"):
        wikitext103(str(wiki_folder / "nowhere"), "train")
    (wiki_folder / "wiki.valid.raw").unlink()
    with pytest.raises(FileNotFoundError, match=r"wiki\.valid\.raw does not exist: the validation split"):
        wikitext103(str(wiki_folder), "validation")


def test_wikitext_names_a_file_that_is_not_utf8(wiki_folder):
    (wiki_folder / "wiki.test.raw").write_bytes(" \n = Caf\xe9 = \n".encode("latin-1"))

    with pytest.raises(ValueError, match=r"wiki\.test\.raw is not UTF-8.*iconv"):
        list(wikitext103(str(wiki_folder), "test"))


def test_wikitext_names_a_file_without_article_headings(wiki_folder):
    sections_only = wiki_folder / "wiki.test.raw"
    sections_only.write_text(" \n = = Gameplay = = \n \n Units take turns . \n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{sections_only}:2: text before any article heading ' = Title")):
        list(wikitext103(str(wiki_folder), "test"))

    sections_only.write_text(" \n \n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{sections_only} has no article heading ' = Title = '")):
        list(wikitext103(str(wiki_folder), "test"))


# ---------------------------------------------------------------------------------------------- hub


def test_pg19_hub_streams_emozilla_pg19_and_ids_books_by_their_url(monkeypatch):
    rows = [
        {"short_book_title": "Emma", "publication_date": 1815, "url": "http://www.gutenberg.org/ebooks/158",
         "text": "Emma Woodhouse."},
        {"short_book_title": "Untitled", "publication_date": 1900, "url": "", "text": "No url."},
        {"short_book_title": "Beyond the limit", "publication_date": 1900, "url": "", "text": "Never read."},
    ]
    requests = fake_datasets(monkeypatch, {"emozilla/pg19": rows})

    books = list(pg19("hub", "validation", limit=2))

    assert books == [Document("158", "Emma", "Emma Woodhouse."), Document("1", "Untitled", "No url.")]
    assert requests == [(("emozilla/pg19",), {"split": "validation", "streaming": True})]


def failing_stream():
    yield {"short_book_title": "Emma", "url": "", "text": "Emma Woodhouse."}
    raise ConnectionError("stream cut")


def refusing_hub():
    raise ConnectionError("hub unreachable")


@pytest.mark.parametrize("rows", [refusing_hub, failing_stream])
def test_pg19_hub_failure_says_to_pass_a_local_folder(monkeypatch, rows):
    fake_datasets(monkeypatch, {"emozilla/pg19": rows})

    with pytest.raises(RuntimeError, match=r"emozilla/pg19 split 'train'.*(hub unreachable|stream cut)"
                                           r".*local folder in PG-19's layout.*deepmind/pg19 .*script-based"):
        list(pg19("hub", "train"))


def test_wikitext_hub_rebuilds_articles_from_lines(monkeypatch):
    requests = fake_datasets(monkeypatch, {"Salesforce/wikitext": hub_lines(WIKI_FILES["wiki.train.raw"])})

    articles = list(wikitext103("hub", "test"))

    assert [(article.id, article.text) for article in articles] == [
        ("Valkyria Chronicles III", VALKYRIA), ("Tower Building of the Little Rock Arsenal", TOWER)]
    assert requests == [(("Salesforce/wikitext", "wikitext-103-raw-v1"), {"split": "test"})]


def test_wikitext_hub_failure_says_to_pass_a_local_folder(monkeypatch):
    fake_datasets(monkeypatch, {"Salesforce/wikitext": refusing_hub})

    with pytest.raises(RuntimeError, match=r"Salesforce/wikitext config 'wikitext-103-raw-v1' split 'validation'"
                                           r".*hub unreachable.*local folder .*wiki\.train\.raw"):
        list(wikitext103("hub", "validation"))


# ---------------------------------------------------------------------------------------------- background sources


def test_load_documents_routes_pg19_and_wikitext103_to_the_hub(monkeypatch):
    books = [{"short_book_title": f"Book {n}", "url": f"https://www.gutenberg.org/ebooks/{n}", "text": f"Book {n}."}
             for n in range(3)]
    requests = fake_datasets(monkeypatch, {"emozilla/pg19": books,
                                           "Salesforce/wikitext": hub_lines(WIKI_FILES["wiki.train.raw"])})
    monkeypatch.setitem(CORPORA, "pg19", dataclasses.replace(CORPORA["pg19"], background_hub_documents=2))

    assert load_documents("pg19", "test") == ["Book 0.", "Book 1."]
    assert load_documents("wikitext103", "train") == [VALKYRIA, TOWER]
    assert [args for args, _ in requests] == [("emozilla/pg19",), ("Salesforce/wikitext", "wikitext-103-raw-v1")]


def test_load_documents_reads_a_wikitext_folder_and_checks_a_pg19_folder(wiki_folder, pg19_folder):
    assert load_documents(str(wiki_folder), "validation") == [WIKI_FILES["wiki.valid.raw"].removeprefix(" \n")]
    assert load_documents(str(pg19_folder), "validation") == ["A validation book.\n"]

    (pg19_folder / "validation" / "5.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"validation/5\.txt is an empty book"):
        load_documents(str(pg19_folder), "validation")


# ---------------------------------------------------------------------------------------------- embedded stand-ins


def test_embedded_sources_are_the_austen_novels_and_the_wikipedia_articles():
    books = {split: list(pg19("embedded", split)) for split in ("train", "validation", "test")}
    assert [book.id for book in books["train"]] == ["141", "158", "161", "1342"]
    assert [book.title for book in books["validation"]] == ["Northanger Abbey by Jane Austen"]
    assert [book.title for book in books["test"]] == ["Persuasion by Jane Austen"]
    assert books["test"][0].text.startswith("Persuasion")

    articles = list(wikitext103("embedded", "train"))
    assert len(articles) > 80
    assert all(article.text.startswith(f" = {article.title} = \n") for article in articles)
    assert len(list(wikitext103("embedded", "validation"))) >= 3
