"""Jane Austen's six novels in PG-19's layout, read out of the R data of Debian's r-cran-janeaustenr."""

from __future__ import annotations

import csv
import gzip
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memlm.assets.staging import run_command

AUSTEN_DEBIAN_PACKAGE = "r-cran-janeaustenr"


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


def build_austen_books(folder: Path) -> None:
    """Fill `folder` with the novels in PG-19's layout: `{train,validation,test}/<id>.txt` and `metadata.csv`."""
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
        run_command(download, "austen", "", cwd=scratch)
    except RuntimeError:
        # Fresh containers often have no package lists yet.
        run_command(["apt-get", "update"], "austen",
                    "Needs Debian/Ubuntu apt; run `sudo apt-get update` (with network access to a mirror), then retry.")
        run_command(download, "austen",
                    f"Needs apt with access to a Debian/Ubuntu mirror that has {AUSTEN_DEBIAN_PACKAGE}.", cwd=scratch)
    package = next(scratch.glob("*.deb"))
    run_command(["dpkg-deb", "-x", str(package), str(scratch / "root")], "austen", "Needs dpkg-deb (Debian/Ubuntu).")
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
