"""Command line: `python -m memlm.assets [NAME ...] [--all]` prepares assets and prints `name<TAB>folder` for each."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from memlm.assets import ASSETS, DEFAULT_ASSETS, prepare


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
