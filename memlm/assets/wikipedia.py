"""Wikipedia articles from the test data of the gensim wheel, stripped of wiki markup into WikiText-103's raw format."""

from __future__ import annotations

import bz2
import html
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree

from memlm.assets.staging import download_wheel

GENSIM_WHEEL = "gensim==4.4.0"
WIKIPEDIA_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


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


def build_wikipedia_articles(folder: Path) -> None:
    """Fill `folder` with WikiText-103 raw files `wiki.{train,valid,test}.raw`, attributed in README.txt."""
    # The test data is the same in every gensim wheel: pin one so that any interpreter or platform can fetch it.
    platform = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")
    with tempfile.TemporaryDirectory(prefix="memlm-wikipedia-") as scratch, \
            download_wheel("wikipedia", GENSIM_WHEEL, Path(scratch), *platform) as wheel:
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
