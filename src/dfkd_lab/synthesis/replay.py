"""Distil from a saved transfer set instead of synthesising (``method=kd_transfer``).

The set's newest ``capacity`` images (and soft targets, when it has them) fill the pool once,
reading only the shards that hold them; the student then trains on augmented draws from it
exactly as the method that made the set did. The set is refused when its manifest names
another teacher.
"""

from ..config import ConfigError
from ..data.transfer_set import load_transfer_set, teacher_sha256
from .pool import PoolSynthesizer


class TransferSetReplay(PoolSynthesizer):
    def __init__(self, path: str | None = None, **pool):
        super().__init__(save_transfer_set=False, **pool)
        self.path = path

    def bind_run(self, cfg):
        if not self.path:
            raise ConfigError("method=kd_transfer needs transfer_set=PATH (a run's transfer_set/ folder)")
        images, soft_targets, _ = load_transfer_set(self.path, teacher_sha256(cfg),
                                                                newest=self.pool.capacity)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ConfigError(f"transfer_set={self.path} holds {tuple(images.shape[1:])} images but data= "
                              f"expects {self.image_shape}; pick the dataset the set was made for")
        self.pool.add(images, soft_targets)

    def synthesize(self, ctx):
        return {}  # nothing to make: the set was synthesised once, by another run

    def pool_state(self):
        return {"pool": None}  # the pool is the saved set, which bind_run reads again on resume
