"""``dfkd-bench``: run many methods on one setting and tabulate them (``benchmark.md/.json``).

Each method is a separate ``dfkd-train`` process writing into ``<output dir>/NN_<method>``,
run one after the other. Separate processes (rather than one Hydra multirun) keep the
per-run peak memory honest and let one crashed method leave the others standing.
"""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import ConfigError
from .report import write_report
from .train import CONF_DIR

METHOD_DIR = Path(CONF_DIR) / "method"


@dataclass
class BenchConfig:
    methods: list[str] | None = None
    reference: list[str] = field(default_factory=lambda: ["kd", "scratch"])
    exclude: list[str] = field(default_factory=list)
    budget_s: float | None = None
    overrides: list[str] = field(default_factory=list)
    group: str | None = None
    dry_run: bool = False


ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def is_data_free(method: str) -> bool:
    """Compose ``method=<name>`` (the bench runs inside Hydra, so compose sees conf/)."""
    cfg = hydra.compose("train", overrides=[f"method={method}"])
    return bool(cfg.method.data_free)


def default_methods(reference, exclude=()) -> list[str]:
    """Every data-free method config that exists now (but ``exclude``), then the reference rows."""
    names = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))
    return [n for n in names if n not in {*reference, *exclude} and is_data_free(n)] + list(reference)


def check_methods(methods):
    known = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"methods={unknown} not found in {METHOD_DIR}; known methods: {known}")


def max_time(budget_s: float) -> str:
    """Seconds -> Lightning's ``DD:HH:MM:SS``."""
    if budget_s <= 0:
        raise ConfigError(f"budget_s={budget_s}: give a positive number of seconds (or null)")
    seconds = round(budget_s)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def job_command(method: str, run_dir: Path, cfg: DictConfig, group: str) -> list[str]:
    cmd = [sys.executable, "-m", "dfkd_lab.train", f"method={method}", f"task_name={group}",
           f"hydra.run.dir={run_dir}"]
    if cfg.budget_s is not None:
        cmd.append(f"trainer.max_time={max_time(cfg.budget_s)}")
    return cmd + list(cfg.overrides)


def run_jobs(cfg: DictConfig, out: Path) -> tuple[list[Path], list[dict]]:
    """Run every method; returns the finished run dirs and a row for each failed one."""
    methods = list(cfg.methods) if cfg.methods else default_methods(cfg.reference, cfg.exclude)
    check_methods(methods)
    group = cfg.group or f"bench-{out.name}"
    done, failed = [], []
    for i, method in enumerate(methods):
        run_dir = out / f"{i:02d}_{method}"
        if cfg.dry_run:
            print(" ".join(job_command(method, run_dir, cfg, group)))
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "job.log"
        print(f"[{i + 1}/{len(methods)}] {method} -> {run_dir}", flush=True)
        with open(log, "w") as f:
            code = subprocess.call(job_command(method, run_dir, cfg, group), stdout=f, stderr=subprocess.STDOUT)
        if code == 0 and (run_dir / "metrics.json").is_file():
            done.append(run_dir)
        else:
            print(f"  {method} failed (exit {code}); see {log}", flush=True)
            failed.append({"method": method, "status": f"failed (exit {code})", "run": run_dir.name})
    return done, failed


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig):
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        done, failed = run_jobs(cfg, out)
    except ConfigError as err:
        sys.exit(f"dfkd-bench: {err}")
    if cfg.dry_run:
        return
    _, table = write_report(done, out, stem="benchmark", extra_rows=failed, title="dfkd-lab benchmark")
    print("\n" + table + f"\nbenchmark: {out / 'benchmark.md'}, {out / 'benchmark.json'}, {out / 'report.html'}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
