"""Where a finished data-free student falls short: on its own synthetic images, or only on
real ones.

For a run dir, the student's agreement with the teacher (same top-1 class) and the teacher's
mean confidence on the run's transfer set as saved (its first and last quarter, no
augmentation) and on the real test split. A student that agrees with the teacher on its
transfer set far more than on real images needs better synthetic images; one that already
disagrees on its own transfer set needs a better fit first (more steps, another temperature).

For a teacher with BatchNorm, also the distance of each layer's batch statistics from the
teacher's running statistics (the ``bn`` term synthesis minimises), over batches of the run's
``method.synthesis.batch_size``: real images show the floor sampling noise leaves, so a layer where the
synthetic images stay well above it is one the synthesis misses.

    python -m dfkd_lab.fidelity outputs/2026-11-25/12-00-00 [--checkpoint best]
"""

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .build import build_data, build_student, build_teacher
from .config import ConfigError
from .data.transfer_set import load_transfer_set, teacher_sha256
from .synthesis.bn_hooks import BNStatHooks, bn_layers


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
    """The run's config, data, teacher and trained student (eval mode)."""
    config = run_dir / ".hydra" / "config.yaml"
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    for path in (config, ckpt):
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no {path.relative_to(run_dir)}; give the output dir of a finished run")
    cfg = OmegaConf.load(config)
    data = build_data(cfg)
    teacher = build_teacher(cfg, data).eval()
    student = build_student(cfg, data, teacher)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    try:
        student.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"{ckpt}: its student does not load into student={cfg.student.arch} "
                          f"(a quantised or ensemble student is not supported here): {err}") from err
    return cfg, data, teacher, student.eval()


def fidelity(run_dir, checkpoint: str = "last") -> list[tuple[str, int, float, float, list | None]]:
    """Rows of (images, count, agreement %, teacher confidence, BN distance per layer or None
    for a teacher without BatchNorm) for the transfer set's first and last quarter and the real
    test split."""
    run_dir = Path(run_dir)
    cfg, data, teacher, student = load_run(run_dir, checkpoint)
    if not (run_dir / "transfer_set").is_dir():
        raise ConfigError(f"{run_dir}: no transfer_set/; only methods that distil from a pool of "
                          "synthesised images save one (generator methods such as dafl draw fresh batches)")
    images, _, _ = load_transfer_set(run_dir / "transfer_set", teacher_sha256(cfg))
    quarter = max(1, len(images) // 4)
    test_images = data.split("test").tensors[0]
    parts = [("transfer set, first quarter", images[:quarter]),
             ("transfer set, last quarter", images[-quarter:]),
             ("real test split", test_images)]
    has_bn = bool(bn_layers(teacher))
    return [(name, len(x), *agreement(teacher, student, x),
             bn_distance(teacher, x, cfg.method.synthesis.batch_size) if has_bn else None) for name, x in parts]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="last", help="last or best")
    args = parser.parse_args(argv)
    print("| images | count | student agrees with teacher % | teacher confidence | BN distance per layer |")
    print("|---|---:|---:|---:|---|")
    for name, count, agree, confidence, bn in fidelity(args.run_dir, args.checkpoint):
        layers = " / ".join(f"{d:.2f}" for d in bn) if bn is not None else "no BatchNorm"
        print(f"| {name} | {count} | {agree:.1f} | {confidence:.3f} | {layers} |")


if __name__ == "__main__":
    main()
