"""Synthesis speed: FastDFKD (Fast-2) against DeepInversion with 2000 iterations per batch.

Same teacher, batch size, device and image count for both (``--batches`` batches each);
synthesis only (the student is not trained: ``method.synthesis.warmup_epochs`` covers the whole run),
timed by the runs' own cost meters. Students' accuracies are read from finished runs'
metrics.json when given (``--fast-run``/``--di-run`` run dirs).

    python scripts/synthesis_speed.py --batch-size 128 --batches 4
    python scripts/synthesis_speed.py --teacher wrn16_2_cifar10 --batch-size 32 --batches 2 \
        --overrides data=cifar10 student=wrn16_1     # the CIFAR-10 CPU pair
"""

import argparse
import json
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from dfkd_lab.train import CONF_DIR, run


def measure(method: str, batches: int, batch_size: int, extra=()) -> dict:
    """Synthesise ``batches`` batches with ``method``; return its cost metrics."""
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            f"method={method}", f"method.synthesis.batch_size={batch_size}", f"method.synthesis.steps_per_epoch={batches}",
            "method.epochs=1", "method.synthesis.warmup_epochs=1", "+method.synthesizer.save_transfer_set=false",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "logger=none",
            "callbacks=none", "test=false", f"paths.output_dir={out}", *extra,
        ])
        metrics = run(cfg)
    seconds = metrics["cost/synthesis_s"]
    return {"images": metrics["cost/images"], "seconds": seconds, "per_batch_s": seconds / batches,
            "images_per_s": metrics["cost/images"] / seconds}


def accuracy(run_dir: str | None) -> str:
    if not run_dir:
        return "-"
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return f"{100 * metrics['test/acc']:.2f}%"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--fast-method", default="fastdfkd_2")
    parser.add_argument("--di-iterations", type=int, default=2000)
    parser.add_argument("--teacher", default="lenet5_bn_fc_fmnist", help="teacher config for both (fastdfkd's default)")
    parser.add_argument("--overrides", nargs="*", default=[], help="more overrides for both runs (the setting)")
    parser.add_argument("--fast-run", help="a finished fastdfkd run dir, for the student's accuracy")
    parser.add_argument("--di-run", help="a finished deepinversion run dir, for the student's accuracy")
    args = parser.parse_args()

    setting = [f"teacher={args.teacher}", *args.overrides]
    fast = measure(args.fast_method, args.batches, args.batch_size, setting)
    di = measure("deepinversion", args.batches, args.batch_size,
                 [*setting, f"method.synthesizer.iterations={args.di_iterations}"])
    rows = [(args.fast_method, fast, accuracy(args.fast_run)),
            (f"deepinversion-{args.di_iterations}", di, accuracy(args.di_run))]
    print(f"batch size {args.batch_size}, {args.batches} batches each, teacher {args.teacher} "
          f"{' '.join(args.overrides)}; synthesis only, same device\n")
    print(f"{'method':<22} {'images':>7} {'s/batch':>9} {'images/s':>10} {'student acc':>12}")
    for name, m, acc in rows:
        print(f"{name:<22} {m['images']:>7.0f} {m['per_batch_s']:>9.3f} {m['images_per_s']:>10.1f} {acc:>12}")
    print(f"\nspeed-up {args.fast_method} / deepinversion-{args.di_iterations}: "
          f"{fast['images_per_s'] / di['images_per_s']:.0f}x (the FastDFKD paper reports ~100x on CIFAR-10)")


if __name__ == "__main__":
    main()
