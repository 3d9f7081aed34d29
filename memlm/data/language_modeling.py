"""Language modelling on whole documents of PG-19 or WikiText-103.

A sample is a window of `num_segments` consecutive segments of one document. Its labels are its tokens shifted by
one, so the last position of a segment predicts the first token of the next. A window never crosses a document
boundary and the memory starts empty in every window: memory is reset per document (and every `num_segments`
segments inside one). Each document opens with the tokenizer's beginning-of-text token (GPT-2's <|endoftext|>, as
GPT-2 separates documents), so its first word is predicted too and every token of the document is a label.

- Training draws windows at random positions of the train split: an endless stream seeded like the fact tasks'.
  A document shorter than a window gives one padded window.
- Validation scores the first `val_tokens` tokens of the validation split: the same text at every segment count,
  so the counts compare.
- Evaluation scores whole documents, cut into consecutive windows that share one token (the last input of a window
  is the first label of the next), so each token is a label exactly once.

Documents are read by `memlm.data.corpora`, tokenised once with `datasets` and cached as Arrow files keyed by the
corpus, the source (for a folder: its files' sizes and modification times), the split, the document limit and the
tokenizer. Windows are sliced out of the memory-mapped token column; nothing of corpus size is held in memory.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset, Features, List, Value
from datasets.exceptions import DatasetGenerationError
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers import PreTrainedTokenizerBase

from memlm.data.base import IGNORE, MemoryDataModule
from memlm.data.corpora import corpus as find_corpus

_DOCUMENT_FEATURES = Features({"id": Value("string"), "title": Value("string"), "text": Value("string")})
_TOKEN_FEATURES = Features(
    {"id": Value("string"), "title": Value("string"), "input_ids": List(Value("int32")), "length": Value("int64")}
)


def tokenized_documents(
    corpus: str,
    source: str,
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    max_documents: int | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """The split's documents as a `datasets.Dataset` of `id`, `title`, `input_ids` (int32, opening with the
    beginning-of-text token) and `length`; built once, then read from the cache."""
    find_corpus(corpus)
    reader_args = {"corpus": corpus, "source": source, "split": split, "limit": max_documents}
    source_signature = _source_signature(corpus, source, split)
    try:
        documents = Dataset.from_generator(
            _read_documents,
            features=_DOCUMENT_FEATURES,
            gen_kwargs=reader_args,
            cache_dir=cache_dir,
            fingerprint=_fingerprint(reader_args, source_signature),
        )
    except DatasetGenerationError as error:
        # The reader's own error names the file or folder and the fix; `datasets` wraps it in a generic one.
        raise (error.__cause__ or error) from None
    if len(documents) == 0:
        raise ValueError(f"data.max_documents={max_documents} leaves no {split} documents of {corpus} ({source})")
    start = beginning_of_text(tokenizer)
    return documents.map(
        _tokenize,
        batched=True,
        batch_size=64,
        fn_kwargs={"tokenizer": tokenizer, "start": start},
        remove_columns=["text"],
        features=_TOKEN_FEATURES,
        new_fingerprint=_fingerprint(reader_args, source_signature, _tokenizer_signature(tokenizer), start),
        desc=f"tokenizing {corpus} {split}",
    )


def beginning_of_text(tokenizer: PreTrainedTokenizerBase) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError(f"the tokenizer of {tokenizer.name_or_path} has neither a BOS nor an EOS token to open "
                         "documents with; language modelling needs a decoder's tokenizer")
    return token


def _read_documents(corpus: str, source: str, split: str, limit: int | None):
    for document in find_corpus(corpus).read(source, split, limit):
        yield {"id": document.id, "title": document.title, "text": document.text}


def _tokenize(batch: dict, tokenizer: PreTrainedTokenizerBase, start: int) -> dict:
    # verbose=False: whole books are longer than the model's positions on purpose; they are cut into windows later.
    encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    ids = [[start, *tokens] for tokens in encoded]
    return {"input_ids": ids, "length": [len(document) for document in ids]}


def _source_signature(corpus: str, source: str, split: str) -> list:
    """What identifies the source's content for caching: a folder's file names, sizes and modification times."""
    if source == "hub":
        return ["hub"]
    root = find_corpus(corpus).root(source).resolve()
    # The files at the top (metadata.csv, wiki.*.raw) and those in the split's folder (PG-19's books).
    files = sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())
    files = [path for path in files if len(path.parts) == 1 or path.parts[0] == split]
    return [str(root)] + [(str(path), (root / path).stat().st_size, (root / path).stat().st_mtime_ns)
                          for path in files]


def _tokenizer_signature(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))


def _fingerprint(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


class TokenColumn:
    """The documents' token lists, sliced from the memory-mapped Arrow column without copying whole documents."""

    def __init__(self, documents: Dataset, token_budget: int | None = None):
        self.ids = documents.data.column("input_ids")
        lengths = list(documents["length"])
        self.lengths = lengths if token_budget is None else _cut_to_budget(lengths, token_budget)
        self.ends = np.cumsum(self.lengths).tolist()

    def tokens(self, document: int, start: int, stop: int) -> np.ndarray:
        return self.ids[document].values.slice(start, stop - start).to_numpy()


def _cut_to_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """Document lengths cut to add up to at most `budget` tokens; documents past the budget are left out."""
    kept = []
    for length in lengths:
        if budget < 2:  # a document needs two tokens to hold one label
            break
        kept.append(min(length, budget))
        budget -= kept[-1]
    return kept


class Windows:
    """Samples of `num_segments` segments cut from the documents: inputs, attention mask and next-token labels."""

    def __init__(self, column: TokenColumn, segment_length: int, pad_token: int):
        self.column = column
        self.segment_length = segment_length
        self.pad_token = pad_token

    def window(self, document: int, start: int, num_segments: int) -> dict[str, torch.Tensor]:
        """Inputs from token `start` of `document`, labels one token later; padded where the document ends."""
        size = num_segments * self.segment_length
        stop = min(start + size + 1, self.column.lengths[document])
        tokens = torch.from_numpy(self.column.tokens(document, start, stop).astype(np.int64))
        inputs, labels = tokens[:-1], tokens[1:]
        input_ids = torch.full((size,), self.pad_token, dtype=torch.long)
        attention_mask = torch.zeros(size, dtype=torch.long)
        label_ids = torch.full((size,), IGNORE, dtype=torch.long)
        input_ids[: len(inputs)] = inputs
        attention_mask[: len(inputs)] = 1
        label_ids[: len(labels)] = labels
        shape = (num_segments, self.segment_length)
        return {"input_ids": input_ids.view(shape), "attention_mask": attention_mask.view(shape),
                "labels": label_ids.view(shape)}

    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        """A window at a token drawn uniformly from the split, so longer documents are drawn more often; it is
        moved back to fit inside its document where it can."""
        token = rng.randrange(self.column.ends[-1])
        document = bisect.bisect_right(self.column.ends, token)
        offset = token - (self.column.ends[document - 1] if document else 0)
        size = num_segments * self.segment_length
        start = max(0, min(offset, self.column.lengths[document] - size - 1))
        return self.window(document, start, num_segments)

    def tiling(self, num_segments: int) -> list[tuple[int, int]]:
        """(document, start) of consecutive windows that cover every document, each token a label once."""
        size = num_segments * self.segment_length
        return [(document, start) for document, length in enumerate(self.column.lengths)
                for start in range(0, length - 1, size)]


class TiledDocuments(TorchDataset):
    """Every token of the documents, in consecutive windows of `num_segments` segments (evaluation order)."""

    def __init__(self, windows: Windows, num_segments: int):
        self.windows = windows
        self.num_segments = num_segments
        self.starts = windows.tiling(num_segments)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        document, start = self.starts[index]
        return self.windows.window(document, start, self.num_segments)


class LanguageModelDataModule(MemoryDataModule):
    """`data=pg19` / `data=wikitext103`: next-token prediction on every token of a corpus's documents."""

    kind = "language_model"
    objectives = ("next_token",)

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        objective: str,
        corpus: str = "pg19",
        source: str = "embedded",
        segment_length: int = 32,
        batch_size: int = 16,
        val_segments: Sequence[int] = (1,),
        val_tokens: int | None = 16384,
        max_documents: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(tokenizer, objective, segment_length, batch_size, val_segments, num_workers, seed)
        self.corpus = find_corpus(corpus)
        if max_documents is not None and max_documents < 1:
            raise ValueError(f"data.max_documents={max_documents} must be a positive count, or null for all")
        if val_tokens is not None and val_tokens < 2:
            raise ValueError(f"data.val_tokens={val_tokens} must be at least 2 (one label), or null for the whole "
                             "validation split")
        self.source = source
        self.val_tokens = val_tokens
        self.max_documents = max_documents
        self.cache_dir = cache_dir
        self.pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else beginning_of_text(tokenizer)
        self._documents: dict[str, Dataset] = {}

    def required_assets(self) -> list[str]:
        return self.corpus.required_assets(self.source)

    def documents(self, split: str) -> Dataset:
        if split not in self._documents:
            self._documents[split] = tokenized_documents(
                self.corpus.name, self.source, split, self.tokenizer, self.max_documents, self.cache_dir
            )
        return self._documents[split]

    def prepare_data(self) -> None:
        # Rank 0 tokenises and fills the cache before the other ranks read it.
        super().prepare_data()
        for split in ("train", "validation"):
            self.documents(split)

    def windows(self, split: str, token_budget: int | None = None) -> Windows:
        return Windows(TokenColumn(self.documents(split), token_budget), self.segment_length, self.pad_token)

    def samples(self, split: str, num_segments: int, count: int | None = None) -> TiledDocuments:
        """Every token of the split's first `count` documents (None: all), in windows of `num_segments`."""
        documents = self.documents(split)
        if count is not None:
            documents = documents.select(range(min(count, len(documents))))
        column = TokenColumn(documents)
        return TiledDocuments(Windows(column, self.segment_length, self.pad_token), num_segments)

    def training_maker(self) -> Windows:
        return self.windows("train")

    def val_dataloader(self) -> list[DataLoader]:
        windows = self.windows("validation", self.val_tokens)
        return [self.loader(TiledDocuments(windows, n)) for n in self.val_segments]
