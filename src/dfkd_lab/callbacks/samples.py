"""What the synthesizer makes, at every evaluation: a sample grid and the teacher's class histogram.

A collapsed or class-starved generator is visible here long before the accuracy says so.
Written to ``<run dir>/samples/`` (``epoch_XXX.png``, ``latest.png``, ``classes_epoch_XXX.png``,
``classes_latest.png``) and logged to W&B as PIL images (float tensors come out black in
wandb 0.31). Modules without a synthesizer are left alone.
"""

import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from pytorch_lightning.loggers import WandbLogger
from torchvision.utils import make_grid


def to_uint8_grid(images: torch.Tensor, mean, std, nrow: int = 8) -> Image.Image:
    """Denormalise (x * std + mean), clamp to [0, 1] and tile into one uint8 PIL image."""
    channels = images.shape[1]
    mean = torch.tensor(mean if mean is not None else [0.0] * channels).view(1, -1, 1, 1)
    std = torch.tensor(std if std is not None else [1.0] * channels).view(1, -1, 1, 1)
    x = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if channels == 1 else array)


def histogram_image(counts: list[int], bar: int = 32, height: int = 160) -> Image.Image:
    """A bar chart of class counts, class index under each bar, count above it."""
    image = Image.new("RGB", (bar * len(counts) + 8, height + 32), "white")
    draw = ImageDraw.Draw(image)
    top = max(1, max(counts))
    for c, n in enumerate(counts):
        x0, h = 4 + c * bar, int((height - 14) * n / top)
        draw.rectangle([x0 + 3, height - h, x0 + bar - 3, height], fill=(70, 110, 190))
        draw.text((x0 + 4, height - h - 12), str(n), fill="black")
        draw.text((x0 + bar // 2 - 3, height + 6), str(c), fill="black")
    return image


class SampleGrid(pl.Callback):
    def __init__(self, dirpath: str, mean=None, std=None, n: int = 64, nrow: int = 8):
        self.dirpath, self.mean, self.std, self.n, self.nrow = Path(dirpath), mean, std, n, nrow

    @torch.no_grad()
    def on_validation_end(self, trainer, pl_module):
        synthesizer = getattr(pl_module, "synthesizer", None)
        if synthesizer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        try:
            images = synthesizer.preview(self.n, pl_module.device)
        except NotImplementedError:
            warnings.warn(f"{type(synthesizer).__name__} has no preview(): no sample grid", stacklevel=1)
            return
        logits = pl_module.teacher(images)
        counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist()
        grid = to_uint8_grid(images, self.mean, self.std, self.nrow)
        chart = histogram_image(counts)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        epoch = trainer.current_epoch
        for name, image in [(f"epoch_{epoch:03d}", grid), ("latest", grid),
                            (f"classes_epoch_{epoch:03d}", chart), ("classes_latest", chart)]:
            image.save(self.dirpath / f"{name}.png")
        values = {f"samples/class_{c}": float(n) for c, n in enumerate(counts)}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                logger.log_image("samples/grid", [grid], step=trainer.global_step)
                logger.log_image("samples/teacher_classes", [chart], step=trainer.global_step)
