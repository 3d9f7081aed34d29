import json
import random
import re
import sys
import types

import pytest

from memlm import assets
from memlm.data.background import (
    SentencePool,
    load_documents,
    quality_hub,
    quality_jsonl,
    split_sentences,
    text_folder,
)

BOOK = """CHAPTER I


It is a truth universally acknowledged, that a single man in possession
of a good fortune, must be in want of a wife.

"My dear Mr. Bennet," said his lady to him one day, "have you heard that
Netherfield Park is let at last?" Mr. Bennet replied that he had not.
"""

DOCUMENTS = [
    "One two three. Four five. Six seven eight nine.",
    "Ten. Eleven twelve thirteen fourteen fifteen.",
    "",
    "Sixteen seventeen. Eighteen.",
]


def encode_characters(texts):
    """A stand-in tokenizer: one token per character, so decoding is exact."""
    return [[ord(character) for character in text] for text in texts]


def decode(tokens):
    return "".join(map(chr, tokens))


def corpus_sentences(documents):
    return [sentence for document in documents for sentence in split_sentences(document)]


def test_split_sentences_joins_wrapped_lines_and_keeps_titles_with_names():
    assert split_sentences(BOOK) == [
        "CHAPTER I",
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.",
        '"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park is let at last?"',
        "Mr. Bennet replied that he had not.",
    ]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Dr. Watson and Mrs. Hudson met at St. Paul's. They left!", ["Dr. Watson and Mrs. Hudson met at St. Paul's.",
                                                                       "They left!"]),
        ("J. R. Smith came. Why? Because.", ["J. R. Smith came.", "Why?", "Because."]),
        ("It was 3. it was late.", ["It was 3. it was late."]),
        ('He said "Go." She went.', ['He said "Go."', "She went."]),
        ("A heading\n\nno full stop before this", ["A heading", "no full stop before this"]),
        ("  \n\n  ", []),
    ],
)
def test_split_sentences_cases(text, sentences):
    assert split_sentences(text) == sentences


def test_text_folder_reads_txt_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("Second book.", encoding="utf-8")
    (tmp_path / "1.txt").write_text("\ufeffFirst book.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("Not a book.", encoding="utf-8")

    assert text_folder(tmp_path) == ["First book.", "Second book."]


def test_text_folder_names_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))

    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8.*iconv"):
        text_folder(tmp_path)


def test_text_folder_rejects_a_folder_without_text(tmp_path):
    with pytest.raises(ValueError, match="no .txt files under"):
        text_folder(tmp_path)
    (tmp_path / "blank.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no text"):
        text_folder(tmp_path)


def test_quality_jsonl_keeps_each_article_once(tmp_path):
    records = [{"article": "Story A.", "questions": []}, {"article": "Story B."}, {"article": "Story A."}]
    path = tmp_path / "QuALITY.v1.0.1.htmlstripped.dev"
    path.write_text("\n".join(map(json.dumps, records)) + "\n\n", encoding="utf-8")

    assert quality_jsonl(path) == ["Story A.", "Story B."]


def test_quality_jsonl_names_the_line_without_an_article(tmp_path):
    path = tmp_path / "quality.jsonl"
    path.write_text('{"article": "Story A."}\n{"title": "B"}\n', encoding="utf-8")

    with pytest.raises(ValueError, match=re.escape(f"{path}:2: no 'article'")):
        quality_jsonl(path)


def test_quality_jsonl_names_the_line_that_is_not_json(tmp_path):
    path = tmp_path / "quality.jsonl"
    path.write_text('{"article": "Story A."}\nnot json\n', encoding="utf-8")

    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not valid JSON")):
        quality_jsonl(path)


def test_quality_hub_strips_question_and_options_and_deduplicates(monkeypatch):
    article = "The article.\n\nIts second paragraph."
    inputs = [f"Question {n}?\n\n (A) a\n (B) b\n (C) c\n (D) d\n\n{article}" for n in range(3)]
    requests = []

    def fake_load_dataset(*args, split):
        requests.append((*args, split))
        return {"input": inputs + ["An input without options."]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))

    assert quality_hub("validation") == [article, "An input without options."]
    assert requests == [("tau/scrolls", "quality", "validation")]


def test_load_documents_dispatches_on_the_source(tmp_path, monkeypatch):
    jsonl = tmp_path / "quality.jsonl"
    jsonl.write_text('{"article": "Story A."}\n', encoding="utf-8")
    for split in ("train", "test"):
        (tmp_path / "pg19" / split).mkdir(parents=True)
        (tmp_path / "pg19" / split / "1.txt").write_text(f"A {split} book.", encoding="utf-8")
    monkeypatch.setattr(assets, "folder", lambda name: tmp_path / "pg19")

    assert load_documents(str(jsonl), "train") == ["Story A."]
    assert load_documents(str(tmp_path / "pg19"), "test") == ["A test book."]
    assert load_documents(str(tmp_path / "pg19" / "train"), "validation") == ["A train book."]
    assert load_documents("embedded", "train") == ["A train book."]
    assert load_documents("embedded", "test") == ["A test book."]


def test_load_documents_explains_a_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl.*'quality', 'embedded'"):
        load_documents(str(tmp_path / "missing.jsonl"), "train")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.csv: unsupported"):
        load_documents(str(tmp_path / "data.csv"), "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_documents("embedded", "dev")


def test_sentence_pool_encodes_each_sentence_once_with_a_leading_space():
    calls = []

    def recording_encoder(texts):
        calls.append(list(texts))
        return encode_characters(texts)

    pool = SentencePool(DOCUMENTS, recording_encoder, batch_size=3)

    assert len(pool) == len(corpus_sentences(DOCUMENTS)) == 7
    assert [len(batch) for batch in calls] == [3, 3, 1]
    assert sum(calls, []) == [" " + sentence for sentence in corpus_sentences(DOCUMENTS)]


@pytest.mark.parametrize("num_tokens", [1, 12, 40, 200])
def test_sentence_pool_runs_are_consecutive_text_from_a_sentence_start(num_tokens):
    pool = SentencePool(DOCUMENTS, encode_characters)
    sentences = [" " + sentence for sentence in corpus_sentences(DOCUMENTS)]
    corpus = "".join(sentences)
    starts = {sum(map(len, sentences[:i])) for i in range(len(sentences))}

    for seed in range(30):
        run = pool.run(random.Random(seed), num_tokens)
        text = decode(run.read(0, num_tokens).tolist())

        assert run.start in starts
        # The pool's text goes on from its last sentence to its first.
        assert text == (corpus * (2 + num_tokens // len(corpus)))[run.start : run.start + num_tokens]
        middle = slice(num_tokens // 3, num_tokens // 2 + 1)
        assert decode(run.read(middle.start, middle.stop).tolist()) == text[middle]


def test_sentence_pool_run_ends_are_where_its_sentences_end():
    pool = SentencePool(DOCUMENTS, encode_characters)
    sentences = [" " + sentence for sentence in corpus_sentences(DOCUMENTS)]

    for seed in range(30):
        run = pool.run(random.Random(seed), 150)
        text = decode(run.read(0, 150).tolist())

        ends = run.sentence_ends().tolist()
        assert ends == sorted(set(ends)) and 0 < ends[0] and ends[-1] <= 150
        pieces = [text[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        assert all(piece in sentences for piece in pieces)
        # What follows the last end is the start of a sentence that goes on past the run.
        assert any(sentence.startswith(text[ends[-1]:]) and len(sentence) > 150 - ends[-1] for sentence in sentences)


def test_sentence_pool_run_is_deterministic_per_seed_and_varies_across_seeds():
    pool = SentencePool(DOCUMENTS, encode_characters)

    runs = [pool.run(random.Random(seed), 10).start for seed in range(40)]

    assert runs == [pool.run(random.Random(seed), 10).start for seed in range(40)]
    assert len(set(runs)) > 4


def test_sentence_pool_rejects_documents_without_text():
    with pytest.raises(ValueError, match="no tokens"):
        SentencePool(["", "   "], encode_characters)


def test_sentence_pool_rejects_an_encoder_for_single_texts():
    with pytest.raises(ValueError, match="1 token lists for 3 texts"):
        SentencePool(["One. Two. Three."], lambda texts: [[1, 2]])


def test_sentence_pool_finds_the_sentences_that_mention_a_word():
    pool = SentencePool(DOCUMENTS, encode_characters)
    sentences = [" " + sentence for sentence in corpus_sentences(DOCUMENTS)]

    found = pool.mentioning(encode_characters([" seven", "teen fif"]))

    assert [sentences[index] for index in found] == [
        " Six seven eight nine.", " Eleven twelve thirteen fourteen fifteen.", " Sixteen seventeen."]
    assert all(decode(pool.sentence(index).read(0, len(sentences[index])).tolist()) == sentences[index]
               for index in range(len(pool)))
    assert pool.mentioning(encode_characters([" twenty"])).size == 0
