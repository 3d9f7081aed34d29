"""Background (noise) text in which facts are hidden: document sources, a sentence splitter, a token pool.

Sources: QuALITY articles (the RMT paper's noise), PG-19 books (BABILong's), WikiText-103 articles, the embedded
Jane Austen novels, or any folder of .txt files; PG-19 and WikiText-103 are read by `memlm.data.corpora`.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from memlm.data.corpora import CORPORA, Document, read_utf8

EncodeBatch = Callable[[list[str]], list[list[int]]]

QUALITY_HUB = ("tau/scrolls", "quality")
# QuALITY's release names its jsonl files "QuALITY.v1.0.1.htmlstripped.{train,dev,test}".
_JSONL_SUFFIXES = (".jsonl", ".json", ".train", ".dev", ".test")

_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Prof", "Rev", "Capt", "Col", "Gen", "Lt", "Sgt",
                  "Hon", "Gov", "Messrs", "Mme", "Mlle")
_NOT_ABBREVIATION = "".join(rf"(?<!\b{word}\.)" for word in _ABBREVIATIONS) + r"(?<!\b[A-Z]\.)"
_SENTENCE_END = re.compile(
    rf"([.!?]{_NOT_ABBREVIATION}"  # a full stop after an abbreviation or an initial ends no sentence
    r"""['"’”)\]_]*)"""  # closing quotes, brackets and Gutenberg's _italics_ marks stay with their sentence
    r""" (?=['"‘“(\[_]*[A-Z])"""
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace inside each collapsed to single spaces; blank lines end sentences too."""
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        flat = " ".join(paragraph.split())
        sentences.extend(piece for piece in _SENTENCE_END.sub("\\1\n", flat).split("\n") if piece)
    return sentences


class SentencePool:
    """Tokenized background sentences from which noise of an exact token length is drawn.

    `encode_batch` maps a list of texts to their token ids without special tokens; for a Hugging Face tokenizer,
    `lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]`. Each sentence is encoded once with a
    leading space, so that sentences laid side by side tokenize like running text for GPT-2-style BPE.
    """

    def __init__(self, documents: Iterable[str], encode_batch: EncodeBatch, batch_size: int = 1024) -> None:
        tokens, lengths, sentence_counts = _tokenize_documents(documents, encode_batch, batch_size)
        if tokens.size == 0:
            raise ValueError("the background documents hold no tokens; give at least one document with text")
        self._tokens = tokens
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        # Documents without sentences are left out so that every document drawn has a start sentence.
        counts = np.asarray(sentence_counts, dtype=np.int64)
        self._document_starts = np.concatenate([[0], np.cumsum(counts[counts > 0])])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def mentioning(self, words: list[list[int]]) -> np.ndarray:
        """Indices of the sentences that hold any of `words`, each given as the token ids it has inside running
        text."""
        hits = np.zeros(self._tokens.size, dtype=bool)
        for word in words:
            starts = self._tokens.size - len(word) + 1
            match = np.ones(max(starts, 0), dtype=bool)
            for offset, token in enumerate(word):
                match &= self._tokens[offset : offset + starts] == token
            hits[: match.size] |= match
        return np.unique(np.searchsorted(self._offsets, np.flatnonzero(hits), side="right") - 1)

    def sentence(self, index: int) -> TokenRun:
        """Sentence `index` of the pool, whole."""
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        return TokenRun(self._tokens, self._offsets, start, stop - start)

    def run(self, rng: random.Random, num_tokens: int) -> TokenRun:
        """`num_tokens` consecutive tokens from the start of a random sentence of a random document, going on into
        the next documents (after the last, the first). Nothing is copied until it is read, so noise a million
        tokens long costs nothing until a segment of it is needed."""
        document = rng.randrange(len(self._document_starts) - 1)
        sentence = rng.randrange(int(self._document_starts[document]), int(self._document_starts[document + 1]))
        return TokenRun(self._tokens, self._offsets, int(self._offsets[sentence]), num_tokens)


class TokenRun:
    """A stretch of a pool's token stream, which wraps around from its last token to its first."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, start: int, length: int):
        self._tokens = tokens
        self._offsets = offsets
        self.start = start
        self.length = length

    def read(self, start: int, stop: int) -> np.ndarray:
        """The run's tokens `start` to `stop`."""
        first = (self.start + start) % self._tokens.size
        return self._tokens[np.arange(first, first + stop - start) % self._tokens.size]

    def sentence_ends(self) -> np.ndarray:
        """Offsets in the run at which one of its sentences ends, in order: the places a whole sentence may be
        cut, or a fact put between two."""
        ends, total, stop = self._offsets[1:], self._tokens.size, self.start + self.length
        pieces = [np.zeros(0, dtype=np.int64)]
        for lap_start in range(0, stop, total):
            first = np.searchsorted(ends, self.start - lap_start, side="right")
            last = np.searchsorted(ends, stop - lap_start, side="right")
            pieces.append(ends[first:last] + lap_start - self.start)
        return np.concatenate(pieces)


def _tokenize_documents(
    documents: Iterable[str], encode_batch: EncodeBatch, batch_size: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All sentences' token ids in one flat array, each sentence's length, and each document's sentence count."""
    sentence_counts: list[int] = []

    def spaced_sentences() -> Iterator[str]:
        for document in documents:
            sentences = split_sentences(document)
            sentence_counts.append(len(sentences))
            yield from (" " + sentence for sentence in sentences)

    token_chunks = [np.zeros(0, dtype=np.int32)]
    length_chunks = [np.zeros(0, dtype=np.int64)]
    for batch in _batches(spaced_sentences(), batch_size):
        encoded = encode_batch(batch)
        if len(encoded) != len(batch):
            raise ValueError(f"encode_batch returned {len(encoded)} token lists for {len(batch)} texts; "
                             "it must map a list of texts to one list of token ids per text")
        length_chunks.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        token_chunks.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32))
    return np.concatenate(token_chunks), np.concatenate(length_chunks), sentence_counts


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def load_documents(source: str, split: str) -> list[str]:
    """Background documents of `split` from `source`.

    `source` is "quality" (SCROLLS' QuALITY on the hub), a corpus of `memlm.data.corpora.CORPORA` ("pg19",
    "wikitext103": its first `background_hub_documents` documents on the hub), "embedded" (the Jane Austen novels of
    `memlm.assets`, in PG-19's layout), a QuALITY jsonl file, a folder of WikiText-103's `wiki.*.raw` files, or a
    folder of .txt files. A folder with a `split` subfolder is read as PG-19's layout; any other folder, or a single
    file, is used whole, whatever the split.
    """
    if source == "quality":
        return quality_hub(split)
    if source in CORPORA:
        corpus = CORPORA[source]
        return _texts(corpus.read("hub", split, corpus.background_hub_documents))
    if source == "embedded":
        return _texts(CORPORA["pg19"].read("embedded", split, None))
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_documents(path, split)
    if path.is_file() and path.suffix in _JSONL_SUFFIXES:
        return quality_jsonl(path)
    if path.is_file():
        raise ValueError(f"{path}: unsupported background file; give a QuALITY jsonl file "
                         f"({', '.join(_JSONL_SUFFIXES)}) or a folder of .txt files")
    raise FileNotFoundError(f"background source {source!r} is not 'quality', 'embedded', 'pg19', 'wikitext103' or "
                            "an existing path; give one of those, a QuALITY .jsonl file, a folder of WikiText-103's "
                            "wiki.*.raw files, or a folder of .txt files")


def background_assets(source: str) -> list[str]:
    """The offline assets (`memlm.assets` names) that background `source` reads."""
    # "embedded" background is the PG-19 stand-in; every other source is the hub or the user's files.
    return CORPORA["pg19"].required_assets(source)


def _folder_documents(folder: Path, split: str) -> list[str]:
    if any(folder.glob("wiki.*.raw")):
        return _texts(CORPORA["wikitext103"].read(str(folder), split, None))
    if (folder / split).is_dir():
        return _texts(CORPORA["pg19"].read(str(folder), split, None))
    return text_folder(folder)


def _texts(documents: Iterable[Document]) -> list[str]:
    return [document.text for document in documents]


def quality_hub(split: str) -> list[str]:
    """The distinct QuALITY articles of SCROLLS' `quality` config (hub `tau/scrolls`)."""
    from datasets import load_dataset  # a slow import, needed by this source only

    try:
        rows = load_dataset(*QUALITY_HUB, split=split)
    except Exception as error:  # the hub fails in many ways; each means the same to the user
        raise RuntimeError(f"could not load {QUALITY_HUB[0]} config {QUALITY_HUB[1]!r} split {split!r}: {error}; "
                           "without the Hugging Face hub, give a QuALITY .jsonl file or a folder of .txt files "
                           "as the background source") from error
    articles = _unique(_scrolls_article(text) for text in rows["input"])
    return _require_documents(articles, f"{QUALITY_HUB[0]}/{QUALITY_HUB[1]} split {split!r}")


def _scrolls_article(text: str) -> str:
    """The article of a SCROLLS QuALITY input: "question\\n\\n (A) ... (D) option\\n\\n article"."""
    last_option = text.find("(D)")
    article_start = -1 if last_option == -1 else text.find("\n\n", last_option)
    if article_start == -1:
        return text.strip()
    return text[article_start:].strip()


def quality_jsonl(path: str | Path) -> list[str]:
    """The distinct articles of a QuALITY jsonl file (one JSON object per line with an `article` field)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"QuALITY file {file} does not exist; give the path of a QuALITY .jsonl file")
    articles = [
        _article(line, f"{file}:{line_number}")
        for line_number, line in enumerate(read_utf8(file).splitlines(), start=1)
        if line.strip()
    ]
    return _require_documents(_unique(articles), str(file))


def _article(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg}); "
                         "QuALITY files hold one JSON object per line") from error
    if not isinstance(record, dict) or not isinstance(record.get("article"), str):
        raise ValueError(f"{where}: no 'article' text; each line must be a QuALITY record with an 'article' field")
    return record["article"]


def text_folder(path: str | Path) -> list[str]:
    """One document per *.txt file under `path`, searched recursively, in sorted order."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"background folder {folder} does not exist; give a folder of UTF-8 .txt files")
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise ValueError(f"no .txt files under {folder}; put one UTF-8 .txt file per book there")
    return _require_documents([read_utf8(file) for file in files], str(folder))


def _unique(documents: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(documents))


def _require_documents(documents: list[str], origin: str) -> list[str]:
    non_blank = [document for document in documents if document.strip()]
    if not non_blank:
        raise ValueError(f"{origin} holds no text; give a source with at least one non-empty document")
    return non_blank
