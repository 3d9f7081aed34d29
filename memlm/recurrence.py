"""The segment loop: run a memory head over a batch's segments, carrying its state, with truncated BPTT.

`bptt_depth = k` lets gradients flow through the memory across the batch's last k segments (-1: all of them). The
memory leaving every earlier segment is detached, so an earlier segment's loss reaches only its own computation.
That is what the RMT authors intended; their code detached a copy it then discarded, and counted k against the
longest possible sample instead of the batch's own segment count.

Constant memory: because a segment before the window sends no gradient backwards, its loss can be backpropagated
as soon as it is computed and its graph freed. Only the window's graph is held, so training memory grows with the
BPTT depth and not with the number of segments. The window's tokens are embedded in one lookup, for one embedding
gradient per step. `recompute=True` goes further and checkpoints each segment inside the window, keeping only the
memory between segments and recomputing activations during backward.

One gradient synchronisation per step: under data parallelism every backward call would all-reduce the gradients,
once per chunk. Every backward call but the step's last runs inside `accumulate` (the strategy's no-sync context),
so the gradients are summed locally and synchronised once, by the last. Which call is the last is only known at the
end (a window without a loss makes the last pre-window chunk the last), so each pre-window loss waits for the next
before its backward: one more segment's graph held, still constant in the number of segments.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_map_only
from torch.utils.checkpoint import checkpoint

from memlm.data.base import SegmentedBatch
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput

SegmentLoss = Callable[[int, SegmentOutput, dict], "torch.Tensor | None"]
"""Given a segment's index, output and tensors, its share of the batch loss, or None when it has no targets."""


def detach_state(state: MemoryState) -> MemoryState:
    return tree_map_only(torch.Tensor, torch.Tensor.detach, state)


def read_segment(head: MemoryHead, ids: torch.Tensor, mask: torch.Tensor, state: MemoryState,
                 embeddings: torch.Tensor | None, unpadded: bool) -> SegmentOutput:
    """The head's call on one segment; `unpadded`: the segment has no padding (`Backbone.unpadded`). One function,
    so a checkpointed segment recomputes under the same setting in backward."""
    with head.backbone.unpadded(unpadded):
        return head(ids, mask, state, embeddings)


@dataclass(frozen=True)
class Recurrence:
    bptt_depth: int = -1
    recompute: bool = False

    def __post_init__(self):
        if self.bptt_depth == 0 or self.bptt_depth < -1:
            raise ValueError(
                f"recurrence.bptt_depth={self.bptt_depth}: use a positive number of trailing segments that "
                "gradients flow through, or -1 for all of them"
            )

    def window_start(self, num_segments: int) -> int:
        """Index of the first segment whose incoming memory carries gradient."""
        if self.bptt_depth == -1:
            return 0
        return max(0, num_segments - self.bptt_depth)

    def run(
        self,
        head: MemoryHead,
        batch: SegmentedBatch,
        segment_loss: SegmentLoss,
        backward: Callable[[torch.Tensor], None] | None = None,
        accumulate: Callable[[], AbstractContextManager] = nullcontext,
    ) -> torch.Tensor:
        """Unroll the head over a batch's segments, read one at a time, and return the summed loss.

        Without `backward` the loss keeps its whole graph (evaluation, or one plain backward by the caller). With
        `backward` (training), gradients are computed chunk by chunk as described above and the returned loss is
        detached: the gradients are already in the parameters' `.grad`. Every backward call but the last runs
        inside `accumulate()`.
        """
        start = self.window_start(batch.num_segments)
        state = head.initial_state(batch.size)
        total = torch.zeros((), dtype=torch.float32, device=batch.device)
        window_loss = waiting = None
        window_embeddings = self.window_embeddings(head, batch, start) if backward is not None else None
        for k in range(batch.num_segments):
            segment = batch.segment(k)
            ids, mask = segment["input_ids"], segment["attention_mask"]
            embeddings = window_embeddings[:, k - start] if window_embeddings is not None and k >= start else None
            unpadded = not batch.is_padded(k)
            if k >= start and self.recompute and torch.is_grad_enabled():
                out = checkpoint(read_segment, head, ids, mask, state, embeddings, unpadded, use_reentrant=False)
            else:
                out = read_segment(head, ids, mask, state, embeddings, unpadded)
            loss = segment_loss(k, out, segment)
            state = out.state
            if k >= start:
                if loss is not None:
                    window_loss = loss if window_loss is None else window_loss + loss
                continue
            # Before the window nothing flows back into this segment from later ones: its graph goes with the
            # backward of its loss (at the next pre-window loss, or at the end).
            state = detach_state(state)
            if loss is not None:
                if backward is not None:
                    if waiting is not None:
                        with accumulate():
                            backward(waiting)
                    waiting, loss = loss, loss.detach()
                total = total + loss
        last = [part for part in (waiting, window_loss) if part is not None]
        if backward is not None and last:
            backward(sum(last))
        if window_loss is not None:
            total = total + (window_loss.detach() if backward is not None else window_loss)
        return total

    @staticmethod
    def window_embeddings(head: MemoryHead, batch: SegmentedBatch, start: int) -> torch.Tensor | None:
        """The token embeddings of the BPTT window's segments, (batch, segments, segment_length, hidden), from one
        lookup: the window has one backward, and one lookup gives it one embedding gradient instead of one per
        segment (`MemoryHead.embed_tokens`). Segments before the window backpropagate on their own and look up
        their own."""
        if not torch.is_grad_enabled() or start >= batch.num_segments:
            return None
        ids = torch.stack([batch.segment(k)["input_ids"] for k in range(start, batch.num_segments)], dim=1)
        return head.backbone.embed(ids)
