"""Fully sharded data parallelism (`trainer=fsdp`) for the segment loop, with PyTorch's FSDP2 (`fully_shard`).

Every process keeps a 1/N shard of every weight, gradient and optimiser state; a block's weights are gathered just
before it runs and freed after, in forward and again in backward. Each transformer block is one sharded unit, and
the rest (embeddings, final norm, the head's own weights) one more around the whole `MemoryLM`, as torchtitan shards.

Why FSDP2 and not Lightning's `FSDPStrategy` (FSDP1): memlm's segment loop calls backward several times inside one
training step (the chunked truncated BPTT, `memlm.recurrence`), while the model's outer unit is still in its
forward. FSDP1 asserts on that ("Expects BACKWARD_PRE or BACKWARD_POST state but got FORWARD"; seen on an H200 and
reproduced on CPU). FSDP2 gathers the outer unit's weights for the whole call, lets backward run inside it, and
gives the same gradients as one process (tests/test_sharding.py, two CPU processes over gloo).

The unit boundaries need the loop to run as a module call: `MemoryLM.forward` is the segment loop, and
`MemoryLM.configure_model` shards it here when the strategy has made a device mesh.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` as pure data parallelism: one data-parallel dimension over every process
    of every node, no tensor parallelism, and one full checkpoint file (gathered on rank 0) that eval.py and
    `torch.load(weights_only=True)` read like any other."""

    def __init__(self, **kwargs):
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def shard(model: nn.Module, blocks: nn.ModuleList, mesh: DeviceMesh) -> None:
    """Shard each of `blocks` as its own unit and `model` (holding them) as the outer one, in place; a model already
    sharded is left as it is (Lightning may call `configure_model` again, for a later fit or validate).

    The outer unit keeps its weights gathered after each backward: the segment loop's next segment, in the same
    call, still needs them (FSDP2 would free them after the first backward chunk). `release` frees them when the
    call ends."""
    if isinstance(model, FSDPModule):
        return
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.set_reshard_after_backward(False, recurse=False)


def release(model: nn.Module) -> None:
    """Free the gathered weights of a sharded `model`'s outer unit (nothing for an unsharded one): before the
    optimiser updates the shards, so that the next call gathers the updated weights."""
    if isinstance(model, FSDPModule):
        model.reshard()
