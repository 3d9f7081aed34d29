"""A run's place on its machine and in its directory: threads that fit the cores, one live run per directory, and
a checkpoint before a scheduler's SIGTERM ends it.

PyTorch gives every process as many intra-op threads as the machine has cores. Two DDP processes on one CPU then
run twice as many threads as cores, and OpenMP's spinning waits make each 4-5 times slower: `fitting_threads`
gives each process its share of the cores it may run on, less the cores other processes keep busy when it starts.
Measured on 2 cores (default model, RMT training step, `scripts/bench_speed.py`): alone, 0.109 s with 2 threads and
0.164 s with 1; beside one busy process, 0.386 s with 2 threads (3.5x) and 0.171 s with 1. OpenMP's passive wait
policy also rescued the busy case (0.175 s) but cost 45% alone (0.160 s), so it is not set.

PyTorch's CPU tensors come from the C library's malloc, and glibc's gives every block over its mmap threshold (at
most 32 MiB) fresh pages from the kernel and hands them back on free: each time, the kernel zeroes them and faults
them in, page by page. A step of the default model on a language-model batch allocates 51 MB logits and their
gradients for every segment, so it spent 40% of its time there (measured on 2 cores, `scripts/bench_speed.py --data
pg19`: 0.99 s a step, 0.60 s with the blocks kept). `keep_freed_memory` makes malloc serve every block from its
heap and keep what is freed for the next step, as PyTorch's CUDA allocator caches device memory; the process's
memory then stays at its peak instead of falling between steps.

Two runs writing one directory would overwrite each other's checkpoints and resume from each other's partial files,
so `RunLock` refuses a second live run; a lock left by a process that no longer exists (killed, or on a node that
went down) is taken over. Schedulers stop jobs with SIGTERM and kill them shortly after; Lightning's handler only
ends the fit loop, and Python exits 0 as if training had finished, so `train.py && eval.py` would go on.
`CheckpointOnSigterm` writes `last.ckpt` on the way out and `train` then exits with 143 (128 + SIGTERM), the code a
job killed by SIGTERM reports. An evaluation has nothing to save, and no fit loop reads Lightning's flag, so
`ending_on_sigterm` makes SIGTERM end it at once with 143 instead of letting it run on until the scheduler's kill.
Under SLURM, requeueing is Lightning's `SLURMEnvironment`'s (SIGUSR1 before the time limit; `scripts/slurm.sbatch`).
A report a run rewrites as it goes (`summary.json`, a benchmark's JSON) is written whole or not at all
(`write_json`), so a run killed mid-write leaves its previous figures readable rather than a truncated file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGTERM_EXIT_CODE = 143


@contextmanager
def ending_on_sigterm() -> Iterator[None]:
    """Inside, SIGTERM exits with 143. Lightning's trainer calls a handler it finds installed after its own."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def end(signum, frame):
        raise SystemExit(SIGTERM_EXIT_CODE)

    previous = signal.signal(signal.SIGTERM, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def busy_cores(cores: set[int], seconds: float = 0.1) -> int:
    """How many of `cores` other processes keep busy, from /proc/stat over `seconds` (this process waits
    meanwhile); 0 where /proc/stat cannot be read."""

    def times() -> dict[int, tuple[int, int]]:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return {}
        usage = {}
        for line in lines:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdecimal() and int(name[3:]) in cores:
                ticks = [int(field) for field in fields[:8]]
                usage[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait, all
        return usage

    before = times()
    time.sleep(seconds)
    after = times()
    busy = 0.0
    for core, (idle, total) in after.items():
        if core in before and total > before[core][1]:
            busy += 1 - (idle - before[core][0]) / (total - before[core][1])
    return round(busy)


NOISY_CORES = 0.2
"""Other processes' mean use of the cores during a measurement past which `OthersLoad` calls it noisy: on 2 cores one
busy process slowed a 2-thread step 3.5x."""


class OthersLoad:
    """What other processes did to the machine during a `with` block: the cores they kept busy on average (all the
    machine's busy time from /proc/stat, less this process's and its children's), so a benchmark can say which
    of its measurements ran beside other work; /proc counts in ticks of 10 ms, so a block should last a second or
    more. `cores` is None where /proc cannot be read."""

    def __enter__(self) -> OthersLoad:
        self.cores = None
        self._start = (_machine_busy_seconds(), _own_cpu_seconds(), time.monotonic())
        return self

    def __exit__(self, *exc) -> None:
        machine, own, started = self._start
        machine_now, own_now = _machine_busy_seconds(), _own_cpu_seconds()
        if None not in (machine, own, machine_now, own_now):
            wall = max(time.monotonic() - started, 1e-9)
            self.cores = max(0.0, (machine_now - machine - (own_now - own)) / wall)

    @property
    def noisy(self) -> bool:
        return self.cores is not None and self.cores > NOISY_CORES


def _machine_busy_seconds() -> float | None:
    """CPU seconds every core has spent busy since boot (all but idle and iowait)."""
    try:
        fields = [int(tick) for tick in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float | None:
    """CPU seconds of this process and its descendants, live and exited (an exited child's time moves into its
    parent's once the parent has waited for it)."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended since the listing
        processes[int(entry.name)] = (int(fields[1]), sum(int(tick) for tick in fields[11:15]))
    if os.getpid() not in processes:
        return None
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += processes[pid][1]
        stack.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def fitting_threads(threads: int | None, accelerator: str, devices) -> int:
    """`threads` if set, else OMP_NUM_THREADS if the environment sets it, else the cores this process may use, less
    those other processes keep busy now, divided by the processes of the launch on this machine: torchrun's
    LOCAL_WORLD_SIZE, else the trainer's `devices` (one process each; all GPUs for auto)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads} must be a positive number of threads, or null to fit the cores")
        return threads
    if os.environ.get("OMP_NUM_THREADS", "").isdecimal():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if "LOCAL_WORLD_SIZE" in os.environ:
        local_processes = int(os.environ["LOCAL_WORLD_SIZE"])
    elif isinstance(devices, int) and devices > 0:
        local_processes = devices
    elif accelerator != "cpu":
        local_processes = max(1, torch.cuda.device_count())
    else:
        local_processes = 1
    cores = os.sched_getaffinity(0)
    # The launch's own processes start together and are counted by local_processes, not as busy.
    free = len(cores) - (busy_cores(cores) if local_processes == 1 else 0)
    return max(1, free // local_processes)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEPT_FREE_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Serve every allocation from malloc's heap, never from fresh mmap'd pages, and keep up to 1 GiB freed at its
    top instead of returning it to the kernel; True if the C library is glibc and took both settings, False where
    there is no such setting (macOS, musl), which changes nothing but speed."""
    library = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(library), "mallopt", None) if library else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES))


class RunLock:
    """`run_dir/.lock` naming the run that writes the directory (pid, host, SLURM job), for the duration of a
    `with`. A lock is stale when its process is gone from this host, or when it is this SLURM job's own from
    before a requeue; a lock held on another host is respected, since its liveness cannot be seen from here."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.holder = Holder(os.getpid(), socket.gethostname(), os.environ.get("SLURM_JOB_ID", "-"))

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except PermissionError:
                raise PermissionError(f"{self.path.parent} is not writable: choose another hydra.run.dir") from None
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    raise RuntimeError(
                        f"{self.path.parent} is in use by a live run (pid {holder.pid} on {holder.host}, lock file "
                        f"{self.path}): wait for it to finish, stop it, or choose another hydra.run.dir; if that "
                        "run is gone (its host went down), delete the lock file"
                    ) from None
                # Removing a stale lock and retrying the exclusive create lets exactly one of several starting runs
                # take the directory.
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as file:
                file.write(" ".join(map(str, self.holder)))
            return self

    def __exit__(self, *exc) -> None:
        if self._holder() == self.holder:
            self.path.unlink(missing_ok=True)

    def _holder(self) -> Holder | None:
        try:
            pid, host, job = self.path.read_text().split()
            return Holder(int(pid), host, job)
        except (FileNotFoundError, ValueError):
            return None

    def _stale(self, holder: Holder) -> bool:
        if holder.host == self.holder.host:
            return not _alive(holder.pid)
        return holder.job != "-" and holder.job == self.holder.job


class Holder(NamedTuple):
    pid: int
    host: str
    job: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def is_first_process() -> bool:
    """Whether this is global rank 0 of a launch (torchrun and Lightning's launchers set RANK or LOCAL_RANK and
    NODE_RANK in the other processes before they import anything)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


class CheckpointOnSigterm(Callback):
    """Write `last.ckpt` when Lightning ends the fit loop on SIGTERM (at a batch boundary, so the state is a
    finished step's)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)


@contextmanager
def written_in_place_of(path: Path) -> Iterator[Path]:
    """A file beside `path` for the block to write, renamed over `path` when the block ends and removed if it fails:
    a kill or a full disk mid-write leaves the previous file, never half a new one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON at `path`, whole or not at all (`written_in_place_of`), as checkpoints are saved."""
    with written_in_place_of(path) as partial:
        partial.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
