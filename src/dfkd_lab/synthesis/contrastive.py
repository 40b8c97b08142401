"""CMI (Fang et al. 2021): contrastive model inversion.

Each synthesis round re-initialises a generator and optimises it jointly with its latents
for ``iterations`` steps. Besides the teacher terms of ``GeneratorInversion`` the round
minimises ``cr`` (losses/terms.py): InfoNCE between two views of each image (global: crop+flip; local: random
resized crop), with past images from a memory bank as negatives, so every new batch is
pushed away from what the pool already holds. An image is described by the instance means
of the teacher's BatchNorm inputs, mapped by a small MLP head (trained with the generator)
and L2-normalised. The bank, the head and its optimiser travel in the checkpoint.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError
from ..losses.registry import Lazy
from .bn_hooks import BNStatHooks, bn_layers
from .generator_inversion import GeneratorInversion
from .views import global_view, local_view


class MemoryBank:
    """Ring buffer of past images' (pre-head) features: the negatives of the contrastive term."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ConfigError(f"method.synthesizer.bank_size must be >= 1, got {capacity}")
        self.capacity = capacity
        self.features: torch.Tensor | None = None
        self.next = 0  # where the next row is written
        self.size = 0

    def add(self, features: torch.Tensor):
        features = features.detach().float().cpu()[-self.capacity:]
        if self.features is None:
            self.features = torch.zeros(self.capacity, features.shape[1])
        rows = (self.next + torch.arange(features.shape[0])) % self.capacity
        self.features[rows] = features
        self.next = int(rows[-1] + 1) % self.capacity
        self.size = min(self.capacity, self.size + features.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        if self.size == 0:
            return None
        index = torch.randperm(self.size, generator=generator)[:n]
        return self.features[index]

    def __len__(self):
        return self.size

    def state_dict(self) -> dict:
        return {"features": self.features, "next": self.next, "size": self.size}

    def load_state_dict(self, state: dict):
        self.features, self.next, self.size = state["features"], state["next"], state["size"]


def instance_means(inputs: list[torch.Tensor]) -> torch.Tensor:
    """Per-image channel means of every BN input, concatenated: (N, sum of channels)."""
    return torch.cat([x.float().reshape(x.shape[0], x.shape[1], -1).mean(dim=2) for x in inputs], dim=1)


class ContrastiveSynthesizer(GeneratorInversion):
    terms = (*GeneratorInversion.terms, "cr")

    def __init__(self, iterations: int = 50, cr_temperature: float = 0.2, head_dim: int = 128,
                 lr_head: float = 1e-3, bank_size: int = 8192, negatives: int = 1024,
                 local_scale: tuple = (0.25, 1.0), **kwargs):
        super().__init__(**kwargs)
        if iterations < 1:
            raise ConfigError(f"method.synthesizer.iterations must be >= 1, got {iterations}")
        if cr_temperature <= 0:
            raise ConfigError(f"method.synthesizer.cr_temperature must be > 0, got {cr_temperature}")
        self.iterations, self.cr_temperature = iterations, cr_temperature
        self.head_dim, self.lr_head = head_dim, lr_head
        self.negatives, self.local_scale = negatives, tuple(local_scale)
        self.bank = MemoryBank(bank_size)

    def setup(self, image_shape, num_classes, value_range, teacher):
        super().setup(image_shape, num_classes, value_range, teacher)
        dim = sum(m.num_features for m in bn_layers(teacher))
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, self.head_dim))

    def build_optimizers(self):
        return [torch.optim.Adam(self.head.parameters(), lr=self.lr_head)]

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)

    def step_inputs(self, ctx, x, targets, bn):
        return {**super().step_inputs(ctx, x, targets, bn), "cr_temperature": self.cr_temperature,
                "contrastive_views": Lazy(lambda: self.contrastive_views(ctx, x, bn))}

    def contrastive_views(self, ctx, x, bn: BNStatHooks):
        """Embedded (queries, keys): the global view's BN instance means (from the forward
        already run), then a local view's, then past images' from the bank as more keys. Made
        after the other terms read the global forward's BN statistics (it resets the hooks)."""
        queries = instance_means(bn.inputs)
        bn.reset()
        ctx.teacher(local_view(x, self.rng, self.local_scale))
        keys = instance_means(bn.inputs)
        negatives = self.bank.sample(self.negatives, self.rng)
        if negatives is not None:
            keys = torch.cat([keys, negatives.to(keys.device)])
        return self.embed(queries), self.embed(keys)

    def make(self, ctx):
        self.reinitialise(self.generator)
        z = self.randn(ctx.batch_size, self.nz, device=ctx.device).requires_grad_()
        targets = self.targets(ctx.batch_size, ctx.device)
        inner = self.inner_optimizer(self.generator, z)
        images, self.last_terms = self.optimise(ctx, self.generator, z, targets, self.iterations,
                                                [inner, *ctx.optimizers])
        with torch.no_grad(), BNStatHooks(ctx.teacher) as bn:
            ctx.teacher(global_view(images, self.view_pad, self.view_flip, self.rng))
            self.bank.add(instance_means(bn.inputs))
        return images, None

    def get_extra_state(self):
        return {**super().get_extra_state(), "bank": self.bank.state_dict()}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.bank.load_state_dict(state["bank"])
