"""Where a finished data-free student falls short: on its own synthetic images, or only on
real ones.

For a run dir, the student's agreement with the teacher (same top-1 class) and the teacher's
mean confidence on the run's transfer set as saved (its first and last quarter, no
augmentation) and on the real test split. A generator method (dafl, dfad, dfq, zskt) keeps no
transfer set: its final generators draw fresh batches instead, as they did for the student. A student that agrees with the teacher on its
transfer set far more than on real images needs better synthetic images; one that already
disagrees on its own transfer set needs a better fit first (more steps, another temperature).

For a teacher with BatchNorm, also the distance of each layer's batch statistics from the
teacher's running statistics (the ``bn`` term synthesis minimises), over batches of the run's
``method.synthesis.batch_size``: real images show the floor sampling noise leaves, so a layer where the
synthetic images stay well above it is one the synthesis misses.

    python -m dfkd_lab.fidelity outputs/2026-11-25/12-00-00 [--checkpoint best]
"""

import argparse
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from .build import build_data, build_student, build_teacher
from .config import ConfigError
from .data.sources import DatasetUnavailable
from .data.transfer_set import load_transfer_set, teacher_sha256
from .report import UNFINISHED, read_json, run_status
from .synthesis.bn_hooks import BNStatHooks, bn_layers
from .synthesis.proxy import ProxyReplay
from .zoo import TeacherError


@torch.no_grad()
def agreement(teacher, student, images: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(% of images where student and teacher pick the same class, teacher's mean top-1 probability)."""
    same, confidence = 0.0, 0.0
    for chunk in images.split(batch_size):
        t_logits = teacher(chunk)
        same += (student(chunk).argmax(1) == t_logits.argmax(1)).sum().item()
        confidence += t_logits.softmax(1).max(1).values.sum().item()
    return 100 * same / len(images), confidence / len(images)


@torch.no_grad()
def bn_distance(teacher, images: torch.Tensor, batch_size: int) -> list[float]:
    """Per BatchNorm layer of the teacher, the statistics loss of whole batches of ``batch_size``
    images (fewer if there are fewer images), averaged over the batches."""
    batch_size = min(batch_size, len(images))
    batches = images[: len(images) // batch_size * batch_size].split(batch_size)
    total = 0.0
    with BNStatHooks(teacher) as bn:
        for chunk in batches:
            bn.reset()
            teacher(chunk)
            total = total + torch.stack(bn.losses)
    return (total / len(batches)).tolist()


def load_run(run_dir: Path, checkpoint: str = "last"):
    """The run's config, data, teacher and its method module (eval mode, on the CPU) with the
    student as trained (a quantised one with its fake quantisation) and, for a generator method,
    its final generators. The run's transfer set is neither opened nor reloaded."""
    config = run_dir / ".hydra" / "config.yaml"
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    for path in (config, ckpt):
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no {path.relative_to(run_dir)}; give the output dir of a finished run")
    cfg = OmegaConf.load(config)
    if cfg.method.get("synthesizer") is None:
        raise ConfigError(f"{run_dir}: method={cfg.method.name} is not data-free; fidelity compares a student's "
                          "synthetic images with real ones")
    data = build_data(cfg)
    teacher = build_teacher(cfg, data).eval()
    module = hydra.utils.get_class(cfg.method.module).unbound(cfg, build_student(cfg, data, teacher), teacher, data)
    # the student, and a generator method's generators; a pool method's pool stays on disk
    parts = ("student.", "synthesizer.") if hasattr(module.synthesizer, "generate") else ("student.",)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    missing, unexpected = module.load_state_dict({k: v for k, v in state.items() if k.startswith(parts)}, strict=False)
    wrong = unexpected + [k for k in missing if k.startswith(parts)]
    if wrong:
        raise ConfigError(f"{ckpt}: does not load into method={cfg.method.name} student={cfg.student.arch} "
                          f"as configured in {config} (keys {', '.join(wrong[:5])})")
    return cfg, data, teacher, module.eval()


@torch.no_grad()
def generated(synthesizer, count: int, batch_size: int) -> torch.Tensor:
    """``count`` images from a generator method's final generators, drawn in batches as the
    student's were (the generators' BatchNorm on batch statistics)."""
    synthesizer.generators.train()
    return torch.cat([synthesizer.generate(min(batch_size, count - done), "cpu")
                      for done in range(0, count, batch_size)])


def fidelity(run_dir, checkpoint: str = "last", generated_images: int = 2048) -> list[tuple[str, int, float, float, list | None]]:
    """Rows of (images, count, agreement %, teacher confidence, BN distance per layer or None
    for a teacher without BatchNorm) for the transfer set's first and last quarter (a generator
    method: ``generated_images`` fresh images from its generators) and the real test split."""
    run_dir = Path(run_dir)
    cfg, data, teacher, module = load_run(run_dir, checkpoint)
    student, batch_size = module.student, cfg.method.synthesis.batch_size
    if (run_dir / "transfer_set").is_dir():
        images, _, _ = load_transfer_set(run_dir / "transfer_set", teacher_sha256(cfg))
        quarter = max(1, len(images) // 4)
        parts = [("transfer set, first quarter", images[:quarter]), ("transfer set, last quarter", images[-quarter:])]
    elif hasattr(module.synthesizer, "generate"):
        parts = [("generator, fresh batches", generated(module.synthesizer, generated_images, batch_size))]
    else:
        reason = ("it synthesises nothing: its images are the proxy's" if isinstance(module.synthesizer, ProxyReplay)
                  else "moved, or saving it was switched off")
        raise ConfigError(f"{run_dir}: no transfer_set/ ({reason}) and method={cfg.method.name} has no generator "
                          "to draw images from")
    parts.append(("real test split", data.split("test").tensors[0]))
    has_bn = bool(bn_layers(teacher))
    return [(name, len(x), *agreement(teacher, student, x),
             bn_distance(teacher, x, batch_size) if has_bn else None) for name, x in parts]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="last", help="last or best")
    args = parser.parse_args(argv)
    try:
        rows = fidelity(args.run_dir, args.checkpoint)
    except (ConfigError, TeacherError, DatasetUnavailable, FileNotFoundError, ValueError) as err:
        sys.exit(f"python -m dfkd_lab.fidelity: {err}")
    status = run_status(read_json(args.run_dir / "metrics.json")) if (args.run_dir / "metrics.json").is_file() else UNFINISHED
    if status != "finished":
        sys.stderr.write(f"python -m dfkd_lab.fidelity: note: the run in {args.run_dir} did not end as finished: "
                         f"{status}; the table is of its {args.checkpoint} checkpoint\n")
    print("| images | count | student agrees with teacher % | teacher confidence | BN distance per layer |")
    print("|---|---:|---:|---:|---|")
    for name, count, agree, confidence, bn in rows:
        layers = " / ".join(f"{d:.2f}" for d in bn) if bn is not None else "no BatchNorm"
        print(f"| {name} | {count} | {agree:.1f} | {confidence:.3f} | {layers} |")


if __name__ == "__main__":
    main()
