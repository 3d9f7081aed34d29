"""The training configuration, checked once at start: every key's type, and the ranges no constructor checks, each
error naming the key.

Hydra composes untyped YAML, so `data.batch_size=abc` would reach a DataLoader as a string and fail deep inside it.
The schema is the code itself: each node is checked against the annotated signature of what consumes it (the
`_target_` of backbone, model and data; `SegmentCurriculum`, `Recurrence`, `Optim` and `lightning.Trainer` for
the others), so a new head or DataModule brings its schema with its constructor and needs no entry here. Ranges
that only the constructors know stay there, where they already name their keys.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from transformers import SchedulerType

from memlm.curriculum import SegmentCurriculum
from memlm.recurrence import Recurrence


@dataclass(frozen=True)
class Optim:
    """The `optim` group: AdamW and a transformers LR schedule, with gradient-norm clipping."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    schedule: str
    warmup_steps: int
    gradient_clip_val: float | None = None

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be positive")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be zero or positive")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        schedules = [kind.value for kind in SchedulerType]
        if self.schedule not in schedules:
            raise ValueError(f"optim.schedule={self.schedule!r} is not one of transformers' schedules {schedules}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be zero or positive")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise ValueError(f"optim.gradient_clip_val={self.gradient_clip_val} must be positive, or null for none")


GROUPS: dict[str, Callable | None] = {
    "curriculum": SegmentCurriculum,
    "recurrence": Recurrence,
    "optim": Optim,
    "trainer": L.Trainer,
    "backbone": None,
    "model": None,
    "data": None,
}
"""Each checked node and what consumes it (None: its own `_target_`). Data comes last: its keys interpolate
others' (`data.val_segments: ${curriculum.segments}`), and an error names the key that was set."""


def check_config(cfg: DictConfig) -> None:
    """Raise, naming the key, on the first value of the wrong type or out of range."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(plain.get("seed"), int) or isinstance(plain["seed"], bool):
        raise TypeError(f"seed={plain.get('seed')!r} must be an integer")
    if not conforms(plain.get("threads"), int | None):
        raise TypeError(f"threads={plain.get('threads')!r} must be an integer or null")
    check_boolean("keep_freed_memory", plain.get("keep_freed_memory"))
    for group, consumer in GROUPS.items():
        node = plain[group]
        check_types(node, consumer or get_method(node["_target_"]), group)
    Optim(**plain["optim"])
    SegmentCurriculum.check_segments(plain["curriculum"]["segments"])
    max_steps = plain["trainer"]["max_steps"]
    if max_steps == 0 or max_steps < -1:
        raise ValueError(f"trainer.max_steps={max_steps} trains nothing: give a positive number of steps (or -1 "
                         "with trainer.max_epochs)")


def check_boolean(key: str, value) -> None:
    """Raise, naming `key`, unless `value` is true or false: a string such as 'sometimes' would read as true."""
    if not isinstance(value, bool):
        raise TypeError(f"{key}={value!r} must be true or false")


def check_types(node: dict, consumer: Callable, prefix: str) -> None:
    """Check each key of `node` against the annotation of the parameter of `consumer` it sets."""
    function = consumer.__init__ if isinstance(consumer, type) else consumer
    signature, hints = inspect.signature(function), typing.get_type_hints(function)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    name = getattr(consumer, "__qualname__", str(consumer))
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in signature.parameters:
            if takes_any:
                continue
            raise ValueError(f"{prefix}.{key} is not a setting of {name}, which takes "
                             f"{[p for p in signature.parameters if p not in ('self', 'backbone')]}")
        expected = hints.get(key, Any)
        if not conforms(value, expected):
            raise TypeError(f"{prefix}.{key}={value!r} must be {describe(expected)}")


def conforms(value: Any, expected: Any) -> bool:
    """Whether a plain config value (from YAML or the command line) can be what `expected` annotates. Classes a
    config cannot hold (a tokenizer, a Backbone) conform: they are passed in code, not from the config."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(item, args[0]) for item in value)
        return len(value) == len(args) and all(conforms(item, arg) for item, arg in zip(value, args, strict=True))
    if origin in (list, collections.abc.Sequence) or expected in (list, tuple):
        return isinstance(value, list | tuple) and all(conforms(item, args[0]) for item in value if args)
    if origin in (dict, collections.abc.Mapping) or expected is dict:
        return isinstance(value, dict)
    return True


def describe(expected: Any) -> str:
    """`expected` in words: 'an integer', 'null or a list of integers'."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        return f"a list of {len(args)} numbers" if all(arg is float for arg in args) else "a list"
    if origin in (list, collections.abc.Sequence):
        return f"a list of {describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))
