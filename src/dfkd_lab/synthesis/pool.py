"""The image pool: where inversion-style methods (DeepInversion, ADI, ZSKD, Wang 2021, Lopes,
CMI, FastDFKD) put what they synthesise, and what the student then trains on.

``PoolSynthesizer`` is their common base: a subclass only says how to make one batch
(``make``); adding it to the pool (and to the on-disk transfer set), counting the cost,
drawing augmented training batches and saving the pool in the checkpoint live here once.

Memory and disk stay bounded at any scale (docs/memory.md): the pool keeps at most
``synthesizer.capacity`` images (the newest; each new one overwrites the oldest), and a
checkpoint holds only the pool's index (how many images, where the next one goes, how many
transfer-set shards are valid), not its pixels: the pixels are already on disk in the transfer
set, and a resumed run re-reads the newest shards that fill the pool.
"""

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..data.augment import crop_flip, mixup
from .base import SynthBatch, Synthesizer, is_distributed

# Images a pool keeps by default: 200k CIFAR images (12 KiB each as float32) take 2.4 GB, and no
# shipped Fashion-MNIST preset makes as many, so their pools never drop an image.
DEFAULT_CAPACITY = 200_000


class ImagePool:
    """Images (and optional soft targets) kept detached on the CPU; beyond ``capacity`` each
    new image overwrites the oldest (first in, first out).

    One storage tensor that grows by doubling up to the capacity, then is written as a ring:
    adding is O(batch) and drawing a batch indexes the storage directly, with no per-draw
    concatenation and no per-add copy of the whole pool.
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"method.synthesizer.capacity must be a number of images >= 1, got {capacity!r}")
        self.capacity = capacity
        self._images: torch.Tensor | None = None
        self._soft: torch.Tensor | None = None
        self._size = 0
        self._next = 0  # the slot the next image goes to

    def _grown(self, storage: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
        if storage is not None and storage.shape[0] >= rows:
            return storage
        new_rows = min(max(rows, 2 * (storage.shape[0] if storage is not None else 0)), self.capacity)
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
        if images.shape[0] > self.capacity:  # only the newest fit
            images = images[-self.capacity:]
            soft_targets = soft_targets[-self.capacity:] if soft_targets is not None else None
        n = images.shape[0]
        filled = min(self._size + n, self.capacity)
        slots = torch.arange(self._next, self._next + n) % self.capacity
        self._images = self._grown(self._images, filled, images)
        self._images[slots] = images.detach().float().cpu()
        if soft_targets is not None:
            self._soft = self._grown(self._soft, filled, soft_targets)
            self._soft[slots] = soft_targets.detach().float().cpu()
        self._size = filled
        self._next = (self._next + n) % self.capacity

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

    def index_state(self) -> dict:
        """Where the pool stands, without its pixels: a few numbers whatever it holds."""
        return {"capacity": self.capacity, "size": self._size, "next": self._next}

    def _slots_oldest_first(self) -> torch.Tensor:
        return (torch.arange(self._size) + self._next - self._size) % self._size

    def state_dict(self) -> dict:
        """The index and the pixels, oldest first (for pools whose images are nowhere else)."""
        if not self._size:
            return {**self.index_state(), "images": None, "soft_targets": None}
        slots = self._slots_oldest_first()
        return {**self.index_state(), "images": self._images[slots],
                "soft_targets": self._soft[slots] if self._soft is not None else None}

    def load_state_dict(self, state: dict):
        self.restore(state, state["images"], state["soft_targets"])

    def restore(self, index: dict, images: torch.Tensor | None, soft_targets: torch.Tensor | None):
        """Back to ``index`` (``index_state``) given the pool's images in the order they were
        added, oldest first: as ``state_dict`` saves them, and as the transfer set holds them."""
        self._images, self._soft, self._size, self._next = None, None, 0, 0
        if index["capacity"] is None:  # saved before pools had a capacity: in order, never wrapped
            if images is not None:
                self.add(images, soft_targets)
            return
        if index["capacity"] != self.capacity:
            raise ConfigError(f"the checkpoint's image pool has capacity {index['capacity']} but "
                              f"method.synthesizer.capacity={self.capacity}: resume with method.synthesizer.capacity={index['capacity']}")
        self._size, self._next = index["size"], index["next"]
        if not self._size:
            return
        if images.shape[0] != self._size:
            raise ValueError(f"the pool held {self._size} images but {images.shape[0]} were given back")
        slots = self._slots_oldest_first()
        self._images = torch.empty(images.shape)
        self._images[slots] = images.float()
        if soft_targets is not None:
            self._soft = torch.empty(soft_targets.shape)
            self._soft[slots] = soft_targets.float()


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


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

    def __init__(self, capacity: int = DEFAULT_CAPACITY, augment_pad: int = 0, augment_flip: bool = False,
                 augment_mixup: bool = False, save_transfer_set: bool = True):
        super().__init__()
        if augment_pad < 0:
            raise ConfigError(f"method.synthesizer.augment_pad must be >= 0, got {augment_pad}")
        self.pool = ImagePool(capacity)
        self.augment_pad, self.augment_flip, self.augment_mixup = augment_pad, augment_flip, augment_mixup
        self.save_transfer_set = save_transfer_set
        self.transfer_set = None  # a TransferSetWriter once bind_run opened one
        self.seeded_images = 0  # images the pool started with that the run did not make (seed)
        self.last_terms: dict[str, torch.Tensor] = {}

    #: whether every pooled image carries a soft target (ZSKD, Wang 2021: what it was made to match)
    stores_soft_targets: bool = False

    def seed_pool(self, images: torch.Tensor, soft_targets: torch.Tensor | None = None):
        """Start the pool with images the run did not make (a proxy's), with soft targets where
        the pool keeps them. The transfer set holds only what the run made, so a resumed run,
        seeded again the same way before its checkpoint loads, takes the oldest images of its
        pool from this seed."""
        if self.stores_soft_targets and soft_targets is None:
            raise ValueError(f"{type(self).__name__} keeps a soft target with every image: seed its pool with them")
        self.pool.add(images, soft_targets)
        self.seeded_images = len(self.pool)

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

    def pool_state(self) -> dict:
        """What the checkpoint keeps of the pool. With a transfer set: the pool's index and the
        count of valid shards, not the pixels (they are in the shards); without one, the pixels."""
        if self.transfer_set is None:
            return {"pool": self.pool.state_dict()}
        return {"pool": self.pool.index_state(),
                "transfer_set": {"shards": self.transfer_set.next_index, "world_size": _world_size()}}

    def get_extra_state(self):
        return {**super().get_extra_state(), **self.pool_state()}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        if "transfer_set" in state:
            self._reload_pool(state["pool"], **state["transfer_set"])
        elif state.get("pool") is not None:  # None: the subclass refills the pool itself
            self.pool.load_state_dict(state["pool"])

    def _reload_pool(self, index: dict, shards: int, world_size: int):
        """Drop the shards made after the checkpoint (rank zero), then refill the pool from the
        newest valid shards: the part of each that rank ``rank % world_size`` of the run that
        wrote them made (its own part when the device count is unchanged; after a DDP spawn the
        main process gets rank zero's pool back this way)."""
        if self.transfer_set is None:
            raise ConfigError("this checkpoint's image pool lives in the run's transfer set: resume it with "
                              "method.synthesizer.save_transfer_set=true")
        if _rank() == 0:
            self.transfer_set.truncate(shards)
        images, soft, held = [], [], 0
        for shard in reversed(range(shards)):
            if held >= index["size"]:
                break
            x, s = self.transfer_set.read(shard, _rank() % world_size, world_size)
            images.insert(0, x)
            if s is not None:
                soft.insert(0, s)
            held += x.shape[0]
        if held < index["size"] and self.seeded_images:  # the seed is what the pool held before the shards
            seed = self.pool.state_dict()
            images.insert(0, seed["images"])
            if seed["soft_targets"] is not None:
                soft.insert(0, seed["soft_targets"])
            held += self.seeded_images
        keep = index["size"]
        self.pool.restore(index, torch.cat(images)[held - keep:] if keep else None,
                          torch.cat(soft)[held - keep:] if keep and soft else None)
