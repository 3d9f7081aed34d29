"""Language-model data: every token a label once, windows inside one document, tokenisation cached by `datasets`,
clear errors for bad corpora; perplexity token-weighted over the whole text."""

import json
import math
import random

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memlm.data import language_modeling
from memlm.data.base import IGNORE
from memlm.data.language_modeling import LanguageModelDataModule, tokenized_documents
from memlm.evaluation import evaluate
from memlm.module import MemoryLM
from memlm.objectives import choose_objective
from memlm.training import train
from tests.conftest import TINY_GPT2, compose_train
from tests.heads import HEADS
from tests.test_corpora import WIKI_FILES, hub_lines, pg19_folder, wiki_folder  # noqa: F401 (fixtures)
from tests.test_evaluation import eval_cfg


def lm_data(tokenizer, source, tmp_path, corpus="pg19", **kwargs) -> LanguageModelDataModule:
    settings = {"segment_length": 16, "batch_size": 4, "cache_dir": str(tmp_path / "datasets"), **kwargs}
    return LanguageModelDataModule(tokenizer, "next_token", corpus=corpus, source=str(source), **settings)


def document_tokens(module, split) -> list[list[int]]:
    return [list(ids) for ids in module.documents(split)["input_ids"]]


def scored(samples) -> tuple[list[int], list[int]]:
    """The real inputs and the labels of all samples, in order."""
    inputs, labels = [], []
    for sample in samples:
        inputs += sample["input_ids"][sample["attention_mask"].bool()].tolist()
        labels += sample["labels"][sample["labels"] != IGNORE].tolist()
    return inputs, labels


# ---------------------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("num_segments", [1, 3, 400])  # 400 x 16 tokens: longer than any book, one padded window
def test_evaluation_windows_label_every_token_of_every_document_once(tokenizer, background, tmp_path, num_segments):
    module = lm_data(tokenizer, background, tmp_path)
    documents = document_tokens(module, "train")
    assert all(document[0] == tokenizer.eos_token_id for document in documents)  # GPT-2's document separator
    inputs, labels = scored(module.samples("train", num_segments))
    assert labels == [token for document in documents for token in document[1:]]
    assert inputs == [token for document in documents for token in document[:-1]]


def test_evaluation_counts_documents(tokenizer, background, tmp_path):
    module = lm_data(tokenizer, background, tmp_path)
    first = document_tokens(module, "train")[0]
    assert scored(module.samples("train", 2, count=1))[1] == first[1:]


def test_validation_scores_the_same_tokens_at_every_segment_count(tokenizer, background, tmp_path):
    module = lm_data(tokenizer, background, tmp_path, val_segments=[1, 2, 8], val_tokens=500)
    book = document_tokens(module, "validation")[0]
    for loader in module.val_dataloader():
        assert scored(loader.dataset)[1] == book[1:500]


def test_training_windows_lie_inside_one_document_and_repeat_per_seed(tokenizer, background, tmp_path):
    module = lm_data(tokenizer, background, tmp_path)
    windows = module.windows("train")
    documents = [np.asarray(document, dtype=np.int64).tobytes() for document in document_tokens(module, "train")]
    for seed in range(20):
        sample = windows.build(random.Random(seed), 3)
        assert torch.equal(sample["input_ids"], windows.build(random.Random(seed), 3)["input_ids"])
        assert sample["attention_mask"].all()  # generated books are longer than 3 segments: no padding
        # The window's inputs followed by its last label are consecutive tokens of one book.
        tokens = torch.cat([sample["input_ids"].flatten(), sample["labels"].flatten()[-1:]]).numpy().tobytes()
        assert any(tokens in document for document in documents)


# ---------------------------------------------------------------------------------------------- sources


def test_local_folders_in_the_original_layouts(tokenizer, pg19_folder, wiki_folder, tmp_path):  # noqa: F811
    books = lm_data(tokenizer, pg19_folder, tmp_path).documents("train")
    assert books["id"] == ["2", "7", "10"]  # Gutenberg ids in numeric order
    assert books["title"] == ["Poems, Volume 1", "7", "The King James Version of the Bible"]  # from metadata.csv
    assert tokenizer.decode(books[0]["input_ids"]) == "<|endoftext|>A first poem.\n"  # byte-order mark dropped
    articles = lm_data(tokenizer, wiki_folder, tmp_path, corpus="wikitext103").documents("train")
    assert articles["title"] == ["Valkyria Chronicles III", "Tower Building of the Little Rock Arsenal"]
    assert tokenizer.decode(articles[1]["input_ids"][1:]).startswith(" = Tower Building of the Little Rock")


def test_hub_sources_are_read_and_tokenised_the_same_way(tokenizer, tmp_path, monkeypatch):
    import datasets

    requests = []
    book = {"short_book_title": "Emma", "url": "http://www.gutenberg.org/ebooks/158", "text": "Emma Woodhouse."}

    def load_dataset(*args, **kwargs):
        requests.append((args, kwargs))
        return [book] if args[0] == "emozilla/pg19" else hub_lines(WIKI_FILES["wiki.test.raw"])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    books = lm_data(tokenizer, "hub", tmp_path).documents("test")
    assert (books[0]["id"], books[0]["title"]) == ("158", "Emma")
    assert tokenizer.decode(books[0]["input_ids"]) == "<|endoftext|>Emma Woodhouse."
    articles = lm_data(tokenizer, "hub", tmp_path, corpus="wikitext103").documents("test")
    assert articles["title"] == ["Homarus gammarus"]
    assert [args for args, _ in requests] == [("emozilla/pg19",), ("Salesforce/wikitext", "wikitext-103-raw-v1")]
    assert requests[0][1] == {"split": "test", "streaming": True}


# ---------------------------------------------------------------------------------------------- caching


def test_tokenisation_is_cached_and_redone_when_a_book_changes(tokenizer, background, tmp_path, monkeypatch):
    source = tmp_path / "pg19"
    for split in ("train", "validation", "test"):
        (source / split).mkdir(parents=True)
        (source / split / "1.txt").write_text((background / split / "0.txt").read_text())
    calls = []
    tokenize = language_modeling._tokenize
    monkeypatch.setattr(language_modeling, "_tokenize", lambda *args, **kwargs: calls.append(1) or tokenize(
        *args, **kwargs))
    cache = str(tmp_path / "datasets")
    first = tokenized_documents("pg19", str(source), "train", tokenizer, cache_dir=cache)
    assert calls and first[0]["length"] > 100
    calls.clear()
    again = tokenized_documents("pg19", str(source), "train", tokenizer, cache_dir=cache)
    assert not calls and again["input_ids"] == first["input_ids"]
    (source / "train" / "1.txt").write_text("A different, much shorter book.")
    changed = tokenized_documents("pg19", str(source), "train", tokenizer, cache_dir=cache)
    assert calls and changed[0]["length"] < 12


# ---------------------------------------------------------------------------------------------- bad input


def pg19_with(tmp_path, train_files: dict[str, bytes], splits=("train", "validation", "test")):
    root = tmp_path / "bad-pg19"
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / split / "1.txt").write_text("A short book.")
    for name, content in train_files.items():
        (root / "train" / name).write_bytes(content)
    return root


@pytest.mark.parametrize("files, error, message", [
    ({"2.txt": b"  \n"}, ValueError, r"2\.txt is an empty book"),
    ({"3.txt": "Caf\u00e9".encode("latin-1")}, ValueError, r"3\.txt is not UTF-8"),
])
def test_bad_books_are_named(tokenizer, tmp_path, files, error, message):
    module = lm_data(tokenizer, pg19_with(tmp_path, files), tmp_path)
    with pytest.raises(error, match=message):
        module.documents("train")


def test_a_folder_without_the_splits_is_named(tokenizer, tmp_path):
    module = lm_data(tokenizer, pg19_with(tmp_path, {}, splits=("train",)), tmp_path)
    with pytest.raises(FileNotFoundError, match="without the expected splits: it has no validation/"):
        module.documents("validation")


def test_wikitext_folder_without_its_raw_files_is_named(tokenizer, tmp_path):
    module = lm_data(tokenizer, tmp_path, tmp_path, corpus="wikitext103")
    with pytest.raises(FileNotFoundError, match=r"wiki\.train\.raw does not exist"):
        module.documents("train")


def test_an_encoder_backbone_cannot_model_language(tokenizer, background):
    with pytest.raises(ValueError, match="needs a decoder backbone"):
        choose_objective("language_model", is_decoder=False)
    with pytest.raises(ValueError, match="serves the objectives"):
        LanguageModelDataModule(tokenizer, "classify_answer", source=str(background))


# ---------------------------------------------------------------------------------------------- perplexity


def test_perplexity_is_token_weighted_over_the_whole_text_and_per_segment_position(tokenizer, background, tmp_path):
    """The baseline reads each segment alone, so plain per-segment cross-entropy gives the reference figures."""
    cfg = compose_train([*TINY_GPT2, "model=baseline", "data=pg19"])
    model = MemoryLM(backbone=dict(cfg.backbone), model=dict(cfg.model), recurrence={}, optim={}, num_classes=0,
                     objective="next_token")
    module = lm_data(tokenizer, background, tmp_path, batch_size=3, val_segments=[2], val_tokens=300)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(model, dataloaders=module.val_dataloader(), verbose=False)
    nll, tokens, batch_ppl = torch.zeros(2), torch.zeros(2), []
    with torch.no_grad():
        for batch in module.val_dataloader()[0]:
            batch_nll = 0.0
            for k in range(2):
                hidden = model.head.backbone(model.head.backbone.embed(batch["input_ids"][:, k]),
                                             batch["attention_mask"][:, k])
                labels = batch["labels"][:, k]
                losses = F.cross_entropy(model.head.backbone.logits(hidden).transpose(1, 2), labels,
                                         ignore_index=IGNORE, reduction="sum")
                nll[k] += losses
                tokens[k] += (labels != IGNORE).sum()
                batch_nll += float(losses)
            batch_ppl.append(math.exp(batch_nll / int((batch["labels"] != IGNORE).sum())))
    metrics = trainer.callback_metrics
    assert tokens.sum() == 299  # the budget's 300 tokens, the first one predicting nothing
    assert float(metrics["val/ppl_2seg"]) == pytest.approx(math.exp(nll.sum() / tokens.sum()), rel=1e-4)
    for k in range(2):
        assert float(metrics[f"val/ppl_2seg/segment_{k + 1}"]) == pytest.approx(math.exp(nll[k] / tokens[k]), rel=1e-4)
    # The last batch is short: the authors' mean of per-batch perplexities would differ.
    assert float(metrics["val/ppl_2seg"]) != pytest.approx(float(np.mean(batch_ppl)), rel=1e-4)


# ---------------------------------------------------------------------------------------------- train and eval


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_trains_on_language_and_reports_perplexity(lm_cfg, tmp_path, head):
    metrics = train(lm_cfg(head=HEADS[head]))
    assert {"val/ppl_1seg", "val/ppl_2seg", "val/ppl_2seg/segment_1", "val/ppl_2seg/segment_2"} <= set(metrics)
    assert all(math.isfinite(metrics[name]) and metrics[name] > 1 for name in metrics if "ppl" in name)
    assert metrics["train/ppl"] == pytest.approx(math.exp(metrics["train/loss"]), rel=1e-4)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["val_ppl_by_segments"]) == {"1", "2"}
    # No threshold for perplexity: the stage budget (3 steps) moved training to 2 segments.
    history = summary["curriculum"]["history"]
    assert [(entry["segments"], entry["step"], entry["reached"]) for entry in history] == [(1, 3, False)]
    assert summary["curriculum"]["stage"] == 1
    assert (tmp_path / "ppl.png").stat().st_size > 1000


def test_eval_of_the_whole_validation_split_reproduces_training_validation(lm_cfg, tmp_path):
    metrics = train(lm_cfg("data.val_tokens=null", head=HEADS["hmt"]))
    out = tmp_path / "eval"
    report = evaluate(eval_cfg(f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", "lengths=[1,2,5]",
                               "split=validation", "samples=null", "batch_size=3", f"out_dir={out}"))
    assert report.by_length[1] == pytest.approx(metrics["val/ppl_1seg"], rel=1e-4)
    assert report.by_length[2] == pytest.approx(metrics["val/ppl_2seg"], rel=1e-4)
    assert report.by_position[2][2] == pytest.approx(metrics["val/ppl_2seg/segment_2"], rel=1e-4)
    assert list(report.by_position[5]) == [1, 2, 3, 4, 5]
    rows = (out / "ppl_by_length.csv").read_text().splitlines()
    assert rows[0] == "segments,tokens,ppl,loss,samples,seconds,tokens_per_s"
    assert [row.split(",")[:2] for row in rows[1:]] == [["1", "16"], ["2", "32"], ["5", "80"]]
    assert len((out / "ppl_by_segment.csv").read_text().splitlines()) == 1 + 1 + 2 + 5
    assert (out / "ppl_by_length.png").stat().st_size > 1000 and (out / "ppl_by_segment.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("data", ["pg19", "wikitext103"])
def test_hmt_trains_on_the_embedded_stand_ins(tmp_path, data):
    """What `python train.py model=hmt data=pg19|wikitext103` does, shortened to a few steps."""
    metrics = train(compose_train([
        "model=hmt", f"data={data}", "trainer.max_steps=4", "trainer.limit_train_batches=2",
        "curriculum.max_steps_per_stage=2", "curriculum.segments=[1,2]", "data.val_tokens=256",
        f"data.cache_dir={tmp_path / 'datasets'}", f"run_dir={tmp_path}", "callbacks.progress_bar=null",
    ]))
    assert math.isfinite(metrics["val/ppl_2seg"]) and metrics["val/ppl_2seg"] > 1
