"""The offline assets are real: prepared once into the shared cache, then checked for their actual content."""

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memlm import assets
from memlm.assets import staging

MARY_IDS = [24119, 1816, 284, 262, 12436, 13]
ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def test_cache_dir_honours_memlm_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLM_CACHE", str(tmp_path / "elsewhere"))
    assert assets.cache_dir() == tmp_path / "elsewhere"
    assert assets.cache_dir().is_dir()


def test_cache_dir_defaults_to_repo_cache(monkeypatch):
    monkeypatch.delenv("MEMLM_CACHE", raising=False)
    assert assets.cache_dir() == Path(__file__).resolve().parents[1] / ".cache"


def test_failed_preparation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLM_CACHE", str(tmp_path))

    def half_then_fail(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        staging.prepared("demo", ["a.txt", "b.txt"], half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_failed_command_names_asset_command_and_fix():
    command = [sys.executable, "-c", "raise SystemExit('no mirror')"]
    with pytest.raises(RuntimeError) as error:
        staging.run_command(command, "demo-asset", "Run `apt-get update`.")
    message = str(error.value)
    assert "demo-asset" in message and "no mirror" in message and "apt-get update" in message
    assert sys.executable in message


def test_prepare_and_folder_reject_unknown_names():
    with pytest.raises(ValueError, match="gpt2-tokenizer"):
        assets.prepare(["no-such-asset"])
    with pytest.raises(ValueError, match="gpt2-tokenizer"):
        assets.folder("no-such-asset")


def test_folder_of_an_unprepared_asset_names_the_fix_and_builds_nothing(tmp_path, monkeypatch):
    empty_cache = tmp_path / "empty-cache"
    monkeypatch.setenv("MEMLM_CACHE", str(empty_cache))
    with pytest.raises(FileNotFoundError) as error:
        assets.folder("austen")
    message = str(error.value)
    assert "'austen'" in message and str(empty_cache) in message
    assert "python -m memlm.assets austen" in message and "make assets" in message
    assert list(empty_cache.iterdir()) == []


def test_importing_assets_and_looking_up_a_folder_imports_no_builder():
    assets.prepare(["austen"])
    code = ("import sys; from memlm import assets; assets.folder('austen'); "
            "print(sorted(name for name in sys.modules if name.startswith('memlm.assets.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_gpt2_tokenizer_matches_gpt2():
    from transformers import AutoTokenizer, GPT2TokenizerFast

    folder = assets.prepare(["gpt2-tokenizer"])["gpt2-tokenizer"]
    for loader in (GPT2TokenizerFast, AutoTokenizer):
        tokenizer = loader.from_pretrained(folder)
        assert tokenizer("Mary went to the bathroom.")["input_ids"] == MARY_IDS
        assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 50256
        assert len(tokenizer) == 50257


def test_prepared_asset_returns_at_once():
    first = assets.prepare(["austen"])["austen"]
    started = time.perf_counter()
    assert assets.prepare(["austen"]) == {"austen": first}
    assert assets.folder("austen") == first
    assert time.perf_counter() - started < 0.5


def test_cli_prepares_the_default_assets():
    folders = assets.prepare(assets.DEFAULT_ASSETS)
    result = subprocess.run([sys.executable, "-m", "memlm.assets"], capture_output=True, text=True, check=True)
    printed = dict(line.split("\t") for line in result.stdout.splitlines())
    assert printed == {"gpt2-tokenizer": str(folders["gpt2-tokenizer"]), "austen": str(folders["austen"])}


def test_the_austen_file_list_names_every_novel_built():
    from memlm.assets.austen import AUSTEN_NOVELS

    books = {f"{novel.split}/{novel.gutenberg_id}.txt" for novel in AUSTEN_NOVELS}
    assert set(assets.ASSETS["austen"].files) == {"metadata.csv", *books}


@pytest.fixture(scope="module")
def austen() -> Path:
    return assets.prepare(["austen"])["austen"]


def test_austen_has_pg19_layout(austen):
    with (austen / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, fieldnames=["_id", "short_book_title", "publication_date", "url"]))
    files = {path.stem: path.parent.name for path in austen.glob("*/*.txt")}
    assert {row["_id"]: row for row in rows}.keys() == files.keys()
    assert sorted(files.values()) == ["test", "train", "train", "train", "train", "validation"]
    for row in rows:
        assert row["url"] == f"https://www.gutenberg.org/ebooks/{row['_id']}"
        assert row["short_book_title"].endswith(" by Jane Austen")
        assert 1811 <= int(row["publication_date"]) <= 1817


def test_austen_books_are_whole_novels(austen):
    titles = {"1342": "PRIDE AND PREJUDICE", "161": "SENSE AND SENSIBILITY", "158": "EMMA",
              "105": "PERSUASION", "121": "NORTHANGER ABBEY", "141": "MANSFIELD PARK"}
    for book in austen.glob("*/*.txt"):
        text = book.read_text(encoding="utf-8")
        assert len(text) > 100_000
        assert text.upper().startswith(titles[book.stem])
    pride = (austen / "train" / "1342.txt").read_text(encoding="utf-8")
    assert "It is a truth universally acknowledged, that a single man in possession\nof a good fortune" in pride


@pytest.fixture(scope="module")
def wikitext() -> Path:
    return assets.prepare(["wikipedia"])["wikipedia"]


def test_wikitext_has_articles_in_raw_format(wikitext):
    titles = {}
    for split in ("train", "valid", "test"):
        lines = (wikitext / f"wiki.{split}.raw").read_text(encoding="utf-8").split("\n")
        titles[split] = [line.strip(" =") for line in lines if ARTICLE_HEADING.match(line)]
        assert all(line.startswith(" ") for line in lines[:-1])
        assert any(line.startswith(" = = ") for line in lines)
    assert len(titles["train"]) > 80 and len(titles["valid"]) >= 3 and len(titles["test"]) >= 3
    assert "Anarchism" in titles["train"]
    all_titles = [title for split in titles.values() for title in split]
    assert len(all_titles) == len(set(all_titles))


def test_wikitext_is_plain_text_and_attributed(wikitext):
    text = "".join((wikitext / f"wiki.{split}.raw").read_text(encoding="utf-8") for split in ("train", "valid", "test"))
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|", "Category:", "&nbsp;"):
        assert markup not in text
    assert "Anarchism is a political philosophy that advocates self-governed societies" in text
    readme = (wikitext / "README.txt").read_text(encoding="utf-8")
    assert "CC BY-SA" in readme or "Attribution-ShareAlike" in readme
    assert "https://en.wikipedia.org/w/index.php?title=Anarchism&oldid=" in readme


@pytest.mark.slow
def test_smollm2_loads_and_predicts():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.prepare(["smollm2-135m"])["smollm2-135m"]
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert time.perf_counter() - started < 10
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.dtype == torch.float32
    sentence = "Mary went to the bathroom."
    ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == sentence
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    completion = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(completion[0, prompt["input_ids"].shape[1]:])


@pytest.mark.slow
def test_minilm_encodes_similar_sentences_closer():
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = assets.prepare(["all-minilm-l6-v2"])["all-minilm-l6-v2"]
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert tokenizer.vocab_size == 30522
    sentences = ["Mary went to the bathroom.", "Mary walked into the bathroom.", "Stock markets fell sharply."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2] + 0.3
