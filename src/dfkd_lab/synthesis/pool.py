"""The image pool: where inversion-style methods (DeepInversion, ADI, ZSKD, Wang 2021, Lopes,
CMI, FastDFKD) put what they synthesise, and what the student then trains on.

``PoolSynthesizer`` is their common base: a subclass only says how to make one batch
(``make``); adding it to the pool (and to the on-disk transfer set), counting the cost,
drawing augmented training batches and saving the pool in the checkpoint live here once.
"""

import torch
import torch.distributed as dist

from ..data.augment import crop_flip, mixup
from .base import SynthBatch, Synthesizer, is_distributed


class ImagePool:
    """Images (and optional soft targets) kept detached on the CPU; beyond ``capacity``
    (None: unbounded) each new image overwrites the oldest.

    One storage tensor that grows by doubling up to the capacity, then is written as a ring:
    adding is O(batch) and drawing a batch indexes the storage directly, with no per-draw
    concatenation and no per-add copy of the whole pool.
    """

    def __init__(self, capacity: int | None = None):
        if capacity is not None and capacity < 1:
            raise ValueError(f"synthesizer.capacity must be >= 1 or null, got {capacity}")
        self.capacity = capacity
        self._images: torch.Tensor | None = None
        self._soft: torch.Tensor | None = None
        self._size = 0
        self._next = 0  # the slot the next image goes to

    def _grown(self, storage: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
        if storage is not None and storage.shape[0] >= rows:
            return storage
        new_rows = max(rows, 2 * (storage.shape[0] if storage is not None else 0))
        if self.capacity is not None:
            new_rows = min(new_rows, self.capacity)
        new = torch.empty((new_rows, *like.shape[1:]))
        if storage is not None:
            new[: storage.shape[0]] = storage
        return new

    def add(self, images: torch.Tensor, soft_targets: torch.Tensor | None = None):
        if soft_targets is not None and soft_targets.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {soft_targets.shape[0]} soft targets")
        if self._size and (soft_targets is None) != (self._soft is None):
            raise ValueError("a pool holds soft targets for every image or for none")
        if not self._size:
            self._images, self._soft, self._next = None, None, 0
        if self.capacity is not None and images.shape[0] > self.capacity:  # only the newest fit
            images = images[-self.capacity:]
            soft_targets = soft_targets[-self.capacity:] if soft_targets is not None else None
        n = images.shape[0]
        filled = self._size + n if self.capacity is None else min(self._size + n, self.capacity)
        slots = torch.arange(self._next, self._next + n)
        if self.capacity is not None:
            slots = slots % self.capacity
        self._images = self._grown(self._images, filled, images)
        self._images[slots] = images.detach().float().cpu()
        if soft_targets is not None:
            self._soft = self._grown(self._soft, filled, soft_targets)
            self._soft[slots] = soft_targets.detach().float().cpu()
        self._size = filled
        self._next = (self._next + n) % self.capacity if self.capacity else filled

    def __len__(self):
        return self._size

    def _valid(self):
        soft = self._soft[: self._size] if self._soft is not None else None
        return self._images[: self._size], soft

    def sample(self, n: int, generator: torch.Generator):
        """``n`` entries drawn uniformly (with replacement): (images, soft_targets or None)."""
        if not self._size:
            raise RuntimeError("sample() from an empty image pool: synthesize before drawing batches")
        images, soft = self._valid()
        index = torch.randint(0, self._size, (n,), generator=generator)
        return images[index], (soft[index] if soft is not None else None)

    def newest(self, n: int) -> torch.Tensor:
        """The last ``n`` images added, oldest first."""
        if not self._size:
            return torch.empty(0)
        n = min(n, self._size)
        return self._images[(torch.arange(self._next - n, self._next)) % self._size]

    def state_dict(self) -> dict:
        if not self._size:
            return {"capacity": self.capacity, "images": None, "soft_targets": None, "next": 0}
        images, soft = self._valid()
        return {"capacity": self.capacity, "images": images.clone(),
                "soft_targets": soft.clone() if soft is not None else None, "next": self._next}

    def load_state_dict(self, state: dict):
        self.capacity = state["capacity"]
        self._images, self._soft, self._size, self._next = None, None, 0, 0
        if state["images"] is not None:
            self._images = state["images"].clone()
            self._soft = state["soft_targets"].clone() if state["soft_targets"] is not None else None
            self._size = self._images.shape[0]
            default_next = self._size % self.capacity if self.capacity else self._size
            self._next = state.get("next", default_next)


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _from_every_rank(images, soft_targets):
    """Under DDP every rank synthesises its own batch; the transfer set gets all of them (in
    rank order, one shard per step, written by rank zero alone so no two processes write one file)."""
    if not is_distributed():
        return images, soft_targets

    def gather(x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    return gather(images), (gather(soft_targets) if soft_targets is not None else None)


class PoolSynthesizer(Synthesizer):
    """Base of every method whose synthesised images go to a pool the student trains on.

    Subclasses implement ``make(ctx) -> (images, soft_targets or None)``: one batch in the
    normalised pixel space, detached; they record the loss terms they optimised in
    ``self.last_terms`` (detached tensors) and list them in ``terms``.
    """

    def __init__(self, capacity: int | None = None, augment_pad: int = 0, augment_flip: bool = False,
                 augment_mixup: bool = False, save_transfer_set: bool = True):
        super().__init__()
        if augment_pad < 0:
            raise ValueError(f"synthesizer.augment_pad must be >= 0, got {augment_pad}")
        self.pool = ImagePool(capacity)
        self.augment_pad, self.augment_flip, self.augment_mixup = augment_pad, augment_flip, augment_mixup
        self.save_transfer_set = save_transfer_set
        self.transfer_set = None  # a TransferSetWriter once bind_run opened one
        self.last_terms: dict[str, torch.Tensor] = {}

    def bind_run(self, cfg):
        """Open the on-disk transfer set in the run dir (under DDP only rank zero writes to it)."""
        if not self.save_transfer_set:
            return
        from ..data.transfer_set import TransferSetWriter

        self.transfer_set = TransferSetWriter.for_run(cfg)

    def make(self, ctx) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def synthesize(self, ctx):
        images, soft_targets = self.make(ctx)
        images = images.detach()
        self.pool.add(images, soft_targets)
        ctx.cost.add(images=images.shape[0])
        if self.transfer_set is not None:
            images, soft_targets = _from_every_rank(images, soft_targets)
            if _rank() == 0:
                self.transfer_set.write(images, soft_targets, self.value_low, self.value_high, ctx.cost.as_dict())
        return {k: v.detach() for k, v in self.last_terms.items()}

    def batch(self, n, ctx):
        images, soft_targets = self.pool.sample(n, self.rng)
        images = crop_flip(images, self.augment_pad, self.augment_flip, generator=self.rng)
        if self.augment_mixup:
            images, soft_targets = mixup(images, soft_targets, generator=self.rng)
        soft_targets = soft_targets.to(ctx.device) if soft_targets is not None else None
        return SynthBatch(images.to(ctx.device), soft_targets=soft_targets)

    @torch.no_grad()
    def preview(self, n, device):
        return self.pool.newest(n).to(device)

    def get_extra_state(self):
        return {**super().get_extra_state(), "pool": self.pool.state_dict()}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.pool.load_state_dict(state["pool"])
