"""Memory heads behind one interface (`MemoryHead`): the training loop never asks which one it runs."""

from memlm.memory.armt import ARMT
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput
from memlm.memory.baseline import Baseline
from memlm.memory.extended_mind import ExtendedMind
from memlm.memory.hmt import HMT
from memlm.memory.lm2 import LM2
from memlm.memory.lrmt import LRMT
from memlm.memory.rmt import RMT

__all__ = ["ARMT", "HMT", "LM2", "LRMT", "Baseline", "ExtendedMind", "MemoryHead", "MemoryState", "RMT",
           "SegmentOutput"]
