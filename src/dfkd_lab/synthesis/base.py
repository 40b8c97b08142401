"""The Synthesizer: everything a data-free method needs to make data, in one nn.Module.

It answers two questions: ``synthesize(ctx)`` ("improve yourself against this teacher and
student", returning the named loss terms it optimised) and ``batch(n, ctx)`` ("give me a
training batch"). Its parameters, optimiser states and ``get_extra_state`` (pools, RNG,
memory banks) travel in the Lightning checkpoint, so synthesis resumes where it stopped.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class SynthBatch:
    images: torch.Tensor
    teacher_logits: torch.Tensor | None = None  # when already computed (saves a forward)
    soft_targets: torch.Tensor | None = None  # stored targets (e.g. ZSKD's sampled labels)


@dataclass
class SynthContext:
    """What a synthesizer may use during a training step."""

    teacher: nn.Module
    student: nn.Module
    weights: dict
    backward: Callable[[torch.Tensor], None]  # the module's manual_backward (AMP-aware)
    optimizers: list  # this synthesizer's optimisers, as the Trainer wrapped them
    cost: "CostMeter"
    device: torch.device
    batch_size: int
    temperature: float = 1.0
    epoch: int = 0  # the training epoch (NAYER re-initialises its generator every g_life epochs)


class CostMeter(nn.Module):
    """Compute cost as a first-class result: seconds, images made, teacher forwards.

    Buffers, so they are saved in checkpoints and continue after a resume.
    """

    fields = ("synthesis_s", "kd_s", "images", "teacher_forwards")

    def __init__(self):
        super().__init__()
        for name in self.fields:
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))

    def add(self, **amounts):
        for name, amount in amounts.items():
            getattr(self, name).add_(float(amount))

    def as_dict(self) -> dict:
        return {f"cost/{name}": getattr(self, name).item() for name in self.fields}


class LowestLoss:
    """The batch of the lowest loss seen in an inner optimisation, with its terms: the last
    iterate is not always the best one (a high learning rate oscillates)."""

    def __init__(self):
        self.loss, self.images, self.terms = math.inf, None, {}

    def offer(self, loss: torch.Tensor, images: torch.Tensor, terms: dict):
        if loss.item() < self.loss:
            self.loss, self.images = loss.item(), images.detach().to(torch.float32, copy=True)
            self.terms = {k: v.detach() for k, v in terms.items()}


def inner_step(ctx, loss: torch.Tensor, optimizers, after_backward=None):
    """One update of what synthesis optimises (pixels, a generator, its input). Autocast caches
    the low-precision copy of every leaf until the outermost autocast block exits, i.e. for the
    whole training step: the cache is dropped so the next step sees the updated leaves."""
    for opt in optimizers:
        opt.zero_grad()
    ctx.backward(loss)
    if after_backward is not None:
        after_backward()
    for opt in optimizers:
        opt.step()
    torch.clear_autocast_cache()


def is_distributed() -> bool:
    """True inside a DDP run of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Synthesizer(nn.Module):
    #: names in ``loss.weights`` this synthesizer optimises (terms registered in
    #: losses/registry.py), in the order they are summed
    terms: tuple = ()

    def __init__(self):
        super().__init__()
        self.rng = torch.Generator()
        self.rng.manual_seed(0)

    def setup(self, image_shape, num_classes: int, value_range, teacher: nn.Module):
        """Build whatever depends on the data and teacher (called once, before optimisers)."""
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.value_low, self.value_high = (v.view(1, -1, 1, 1) for v in value_range)

    def bind_run(self, cfg):
        """Read run-level settings from the composed config (run dir, teacher identity), after
        ``setup``; pool methods open their on-disk transfer set here. Most need nothing."""

    def seed(self, seed: int):
        """Seed this synthesizer's own RNG; the module gives each DDP rank its own seed."""
        self.rng.manual_seed(seed)

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def synthesize(self, ctx: SynthContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch(self, n: int, ctx: SynthContext) -> SynthBatch:
        raise NotImplementedError

    def preview(self, n: int, device) -> torch.Tensor:
        """A few images for the sample grid (fixed latents where there are latents)."""
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------
    def randn(self, *shape, device=None):
        return torch.randn(*shape, generator=self.rng).to(device)

    def randint(self, high, shape, device=None):
        return torch.randint(0, high, shape, generator=self.rng).to(device)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp to the valid normalised pixel range of the dataset."""
        low, high = self.value_low.to(x.device, x.dtype), self.value_high.to(x.device, x.dtype)
        return torch.max(torch.min(x, high), low)

    def get_extra_state(self):
        return {"rng": self.rng.get_state()}

    def set_extra_state(self, state):
        self.rng.set_state(state["rng"])
