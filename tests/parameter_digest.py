"""A callback for the multi-process tests, added from the command line (`+callbacks.parameter_digest=...`): each
rank writes a digest of its parameters when training ends, so a test can see that the ranks agree."""

import hashlib
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class ParameterDigest(Callback):
    def __init__(self, directory: str):
        self.directory = Path(directory)

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=tensor.dtype).numpy().tobytes())
        (self.directory / f"parameters_rank{trainer.global_rank}.sha256").write_text(digest.hexdigest())


def digest_overrides(directory: Path) -> list[str]:
    return ["+callbacks.parameter_digest._target_=tests.parameter_digest.ParameterDigest",
            f"+callbacks.parameter_digest.directory={directory}"]


def rank_digests(directory: Path) -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(directory.glob("parameters_rank*.sha256"))}
