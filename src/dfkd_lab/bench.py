"""``dfkd-bench``: one benchmark is one Hydra multirun over (setting x) method x seed.

    dfkd-bench "methods=[dafl,kd]" "seeds=[0,1,2]" budget_s=300 hydra/launcher=joblib name=mine
    dfkd-report outputs/bench/mine
    dfkd-bench --config-dir ./conf "methods=[my_method,kd]" name=mine   # a user's own method too

The sweep (``hydra/sweeper=dfkd_bench``, ``hydra_plugins/dfkd_lab_sweepers``) lists the cells,
leaves out those whose run dir holds a finished ``metrics.json`` (so the same command started
again continues a stopped benchmark) and hands the rest to whichever Hydra launcher is chosen:
``basic`` (one by one), ``joblib`` (local processes in parallel), ``submitit_slurm`` or the
project's ``slurm`` (a SLURM array job). Each cell runs ``dfkd-train`` in a fresh process of its
own: its peak memory (max RSS) is that run's alone, and a crashing method leaves the others
standing. A stopped cell resumes from its last checkpoint. At the end the table, figures and
``report.html`` are written into the benchmark dir (``dfkd_lab.report``).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import hydra
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf

from . import stop
from .config import (
    COMPOSITION_ERRORS,
    ConfigError,
    hydra_quoted,
    is_data_free,
    override_changes,
    override_key,
    searchpath_override,
    user_config_paths,
)
from .report import finished_metrics, write_report
from .train import CONF_DIR
from .validate import problems

DEFAULT_SETTING = "default"


@dataclass
class CellConfig:
    """One run of the benchmark; set by the sweeper for each job."""

    method: str | None = None
    seed: int | None = None
    setting: str = DEFAULT_SETTING


@dataclass
class BenchConfig:
    methods: list[str] | None = None
    reference: list[str] = field(default_factory=lambda: ["kd", "scratch"])
    exclude: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget_s: float | None = None
    budget_passes: int | None = None
    threads: int | None = None
    overrides: list[str] = field(default_factory=list)
    settings: dict[str, list[str]] = field(default_factory=dict)
    name: str = "${now:%Y-%m-%d_%H-%M-%S}"
    group: str | None = None
    dry_run: bool = False
    cell: CellConfig = field(default_factory=CellConfig)


ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


# --- the cells -----------------------------------------------------------------------------------
def known_methods(paths=()) -> list[str]:
    """Every ``method`` config Hydra finds: the package's and those in ``paths``."""
    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options("method", overrides=searchpath_override(paths)))


def method_is_data_free(method: str, paths=()) -> bool:
    """Compose ``method=<name>`` (the bench runs inside Hydra, so compose sees conf/)."""
    cfg = hydra.compose("train", overrides=[f"method={method}", *searchpath_override(paths)])
    return is_data_free(cfg.method)


def default_methods(reference, exclude=(), paths=()) -> list[str]:
    """Every data-free method config that exists now (but ``exclude``), then the reference rows."""
    names = known_methods(paths)
    return [n for n in names if n not in {*reference, *exclude} and method_is_data_free(n, paths)] + list(reference)


def check_methods(methods, paths=()):
    known = known_methods(paths)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"methods={unknown} not found among the method configs (the package's, and those of "
                          f"--config-dir or hydra.searchpath folders: {list(paths)}); known methods: {known}")


def check_cell_configs(cfg: DictConfig, todo, paths=()):
    """Each (setting, method) composes as ``dfkd-train`` will compose it: a typo in ``overrides``
    or a setting fails the benchmark before any run starts, instead of every run after it."""
    for setting, method, seed in {(s, m): (s, m, seed) for s, m, seed in todo}.values():
        given = train_overrides(cfg, "check", CellConfig(setting=setting, method=method, seed=seed))
        where = f"overrides and settings.{setting}" if cfg.settings else "overrides"
        try:
            composed = hydra.compose("train", overrides=[*(o for o in given if not o.startswith("hydra")),
                                                         *searchpath_override(paths)])
        except (*COMPOSITION_ERRORS, AssertionError) as err:  # OmegaConf asserts on a key below a null node
            reason = " ".join(line for line in str(err).splitlines()  # '+key' would add a key no code reads
                              if line.strip() and not line.startswith("To append to your config"))
            if isinstance(err, AssertionError):
                reason = "an override sets a key below a block this method does not have (null in its config)"
            raise ConfigError(f"method={method} does not compose with the {where}: {reason}") from err
        found = problems(composed, on_this_machine=False)  # what dfkd-train would refuse in every cell
        if found:
            raise ConfigError(f"method={method} with the {where}: {'; '.join(found)}")


def max_time(budget_s: float) -> str:
    """Seconds -> Lightning's ``DD:HH:MM:SS``."""
    if budget_s <= 0:
        raise ConfigError(f"budget_s={budget_s}: give a positive number of seconds (or null)")
    seconds = round(budget_s)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def cells(cfg: DictConfig, paths=()) -> list[tuple[str, str, int]]:
    """(setting, method, seed) for every run of the benchmark, checked before any starts; ``paths``:
    the user's config folders."""
    settings_of_bench = [f.name for f in fields(BenchConfig)]
    unknown = [str(k) for k in cfg if k not in settings_of_bench and k != "hydra"]  # added with '+key='
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a setting of dfkd-bench (a typo? its settings: "
                          f"{', '.join(k for k in settings_of_bench if k != 'cell')})")
    methods = list(cfg.methods) if cfg.methods else default_methods(cfg.reference, cfg.exclude, paths)
    check_methods(methods, paths)
    if not cfg.seeds:
        raise ConfigError("seeds=[]: give at least one seed, e.g. seeds=[0,1,2]")
    if cfg.budget_s is not None:
        max_time(cfg.budget_s)
    if cfg.budget_passes is not None and cfg.budget_passes <= 0:
        raise ConfigError(f"budget_passes={cfg.budget_passes}: give a positive number of teacher passes")
    given = [*cfg.overrides, *(o for setting in cfg.settings.values() for o in setting)]
    if any(override_key(str(o)) == "hydra.searchpath" for o in given):
        raise ConfigError("hydra.searchpath in overrides or settings: give it to dfkd-bench itself "
                          "(dfkd-bench hydra.searchpath=[...] or --config-dir DIR); every run then searches it")
    settings = list(cfg.settings) or [DEFAULT_SETTING]
    return [(s, m, int(seed)) for s in settings for m in methods for seed in cfg.seeds]


def train_overrides(cfg: DictConfig, group: str, cell=None) -> list[str]:
    """The ``dfkd-train`` overrides of ``cell`` (default: ``cfg.cell``): equal budgets, then the setting."""
    if cell is not None:  # the overrides may name the cell (experiment=..._${cell.method}): read them as its job does
        cfg = OmegaConf.merge(cfg, {"cell": {"method": cell.method, "seed": cell.seed, "setting": cell.setting}})
    cell = cfg.cell
    out = [f"method={cell.method}", f"seed={cell.seed}", f"task_name={group}"]
    if cfg.budget_s is not None:
        out.append(f"trainer.max_time={max_time(cfg.budget_s)}")
    if cfg.budget_passes is not None:
        out.append("+callbacks.teacher_pass_budget={_target_:dfkd_lab.callbacks.budget.TeacherPassBudget,"
                   f"max_passes:{cfg.budget_passes}}}")
    setting = list(cfg.settings[cell.setting]) if cfg.settings else []
    return out + list(cfg.overrides) + setting


def cell_changes(cfg: DictConfig, group: str, cell: CellConfig, run_dir: Path) -> str | None:
    """How the run already in ``run_dir`` differs from what this benchmark command would run
    there (None: it does not, or no run is there). A finished cell is kept and a stopped one
    continued, so a cell run by another command would put two settings in one table."""
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        return None
    saved = [str(o) for o in yaml.safe_load(saved_file.read_text()) or [] if o != "resume=last"]
    # Hydra's own overrides (hydra/job_logging=..., hydra.*) are recorded in hydra.yaml, not here
    now = [str(o) for o in train_overrides(cfg, group, cell) if not str(o).startswith("hydra")]
    changes = override_changes(saved, now)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            threads = json.loads(metrics_file.read_text()).get("machine/threads")
        except ValueError:
            threads = None
        expected = cell_threads(cfg)
        if None not in (threads, expected) and threads != expected:
            given = f"threads={cfg.threads}" if cfg.threads else f"{expected} (threads not given: torch's default here)"
            changes.append(f"ran with {threads} threads, now {given}")
    return ", ".join(changes) or None


def cell_threads(cfg: DictConfig) -> int | None:
    """The torch threads a cell of this command runs with: ``threads``; else, with the basic
    launcher (cells started from this process, in its environment), this process's default;
    None where the launcher decides (joblib limits its workers' threads, slurm runs elsewhere)."""
    import torch

    if cfg.threads:
        return cfg.threads
    basic = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="")).endswith(".BasicLauncher")
    return torch.get_num_threads() if basic else None


def wandb_group(cfg: DictConfig, sweep_dir) -> str:
    """The W&B group of every run of one benchmark (``group=``, else ``bench-<name>``)."""
    return cfg.group or f"bench-{Path(sweep_dir).name}"


def check_cells_unchanged(config: DictConfig, todo, run_dirs):
    group = wandb_group(config, config.hydra.sweep.dir)
    changed = [f"{setting}/{method}/seed{seed}: {diff}" for (setting, method, seed), run_dir in zip(todo, run_dirs)
               if (diff := cell_changes(config, group, CellConfig(method, seed, setting), run_dir))]
    if changed:
        raise ConfigError(
            f"{len(changed)} of the runs in {config.hydra.sweep.dir} were made by another command than this one; "
            f"continuing would put two settings in one table ({'; '.join(changed[:3])}"
            f"{'; ...' if len(changed) > 3 else ''}). Give this benchmark a new name=, or continue it with the "
            f"command that made them ({Path(config.hydra.sweep.dir) / 'command.txt'})")


# --- one cell (the task function every launcher runs) ---------------------------------------
def run_cell(cfg: DictConfig) -> dict:
    """Run ``dfkd-train`` for this job's cell in a fresh process, into this job's output dir."""
    if cfg.cell.method is None:
        raise ConfigError("dfkd-bench runs as a multirun (hydra.mode=MULTIRUN, hydra/sweeper=dfkd_bench)")
    out = Path(HydraConfig.get().runtime.output_dir)
    group = wandb_group(cfg, HydraConfig.get().sweep.dir)
    paths = user_config_paths(HydraConfig.get().runtime.config_sources)
    overrides = [*train_overrides(cfg, group), *searchpath_override(paths), f"hydra.run.dir={hydra_quoted(out)}"]
    if (out / "checkpoints" / "last.ckpt").is_file():
        overrides.append("resume=last")  # a stopped cell continues; its time budget resumes too
    command = [sys.executable, "-m", "dfkd_lab.train", *overrides]
    threads = {"OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads)} if cfg.threads else {}
    if cfg.dry_run:  # the command as the cell would run it: its threads, and the PYTHONPATH it inherits
        inherited = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        prefix = [f"{k}={shlex.quote(v)}" for k, v in {**threads, **inherited}.items()]  # VAR='a b', not 'VAR=a b'
        (out / "command.txt").write_text(" ".join([*prefix, shlex.join(command)]) + "\n")
        return {"dir": str(out), "exit": 0, "dry_run": True}
    env = {**os.environ, **threads}
    if stop.requested() is not None:  # the benchmark was stopped: start no further cell
        return {"dir": str(out), "exit": stop.exit_code(stop.requested()), "started": False}
    with open(out / "bench_job.log", "a") as log, stop.on_signals(reset=False):
        code = run_until_stopped(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return {"dir": str(out), "exit": code}


def run_until_stopped(command: list[str], **popen) -> int:
    """Run ``command`` to its end. Once a stop is requested in this process (``stop.on_signals``:
    Ctrl-C or SIGTERM) it is asked to stop too (SIGTERM: it saves its checkpoint, so the same
    benchmark command continues it) and waited for; ``subprocess.call`` would SIGKILL it on
    Ctrl-C and lose the cell's progress. A second Ctrl-C still ends both at once."""
    with subprocess.Popen(command, **popen) as process:
        asked = False
        try:
            while True:
                try:
                    return process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if stop.requested() is not None and not asked:
                        process.terminate()
                        asked = True
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise


# --- the sweep (called by the dfkd_bench sweeper plugin) --------------------------------------
def command_line(config: DictConfig, arguments) -> str:
    """The command to start this benchmark again, ``--config-dir`` included."""
    config_dirs = [a for s in config.hydra.runtime.config_sources if s.provider == "command-line"
                   for a in ("--config-dir", s.path)]
    hydra_overrides = list(config.hydra.overrides.hydra)
    return shlex.join(["dfkd-bench", *config_dirs, *arguments, *hydra_overrides])


def sweep(config: DictConfig, config_loader, launcher, arguments: list[str]) -> list[str]:
    """Launch every unfinished cell, then write the report; returns the cells that failed."""
    sweep_dir = Path(config.hydra.sweep.dir)
    try:
        paths = user_config_paths(config.hydra.runtime.config_sources)
        todo = cells(config, paths)
        check_cell_configs(config, todo, paths)
        overrides = [[*arguments, f"cell.setting={s}", f"cell.method={m}", f"cell.seed={seed}"] for s, m, seed in todo]
        cell_dirs = [Path(job.hydra.sweep.dir) / job.hydra.sweep.subdir
                     for job in (config_loader.load_sweep_config(config, o) for o in overrides)]
        check_cells_unchanged(config, todo, cell_dirs)
    except ConfigError as err:  # bad input, as dfkd-train reports it: exit 2, before any cell runs
        print(f"dfkd-bench: {err}", file=sys.stderr)
        sys.exit(2)
    jobs, run_dirs, finished = [], [], 0
    for job_overrides, run_dir in zip(overrides, cell_dirs):
        if finished_metrics(run_dir) is not None:  # else it runs (again), from its checkpoint if any
            finished += 1
        else:
            jobs.append(job_overrides)
            run_dirs.append(run_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (config.dry_run and (sweep_dir / "command.txt").is_file()):  # a dry run made none of the cells there
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        (sweep_dir / "command.txt").write_text(command_line(config, arguments) + "\n")
    print(f"dfkd-bench: {len(todo)} runs in {sweep_dir}: {finished} finished before, {len(jobs)} to run",
          flush=True)
    # A stop request (Ctrl-C, SIGTERM) is recorded, not raised: a launcher interrupted by it
    # (joblib) would SIGKILL its workers and the cells they run, before those could save.
    try:
        with stop.on_signals():
            returns = launcher.launch(jobs, initial_job_idx=0) if jobs else []
    except KeyboardInterrupt:  # a second Ctrl-C
        returns = None
    if returns is None or stop.requested() is not None:
        signum = stop.requested() or signal.SIGINT
        print(f"dfkd-bench: stopped by {signal.Signals(signum).name}; no further cell starts (the launcher "
              "may still list them), and a running cell kept what its last checkpoint holds (its bench_job.log "
              f"says). Continue with: {command_line(config, arguments)}", file=sys.stderr)
        sys.exit(stop.exit_code(signum))
    failed, missing = [], []
    for run_dir, ret in zip(run_dirs, returns):
        if ret.status != JobStatus.COMPLETED:
            failed.append(f"{run_dir}: {ret._return_value!r}")
        elif ret.return_value["exit"] != 0:
            failed.append(f"{run_dir}: dfkd-train exit {ret.return_value['exit']}, see {run_dir / 'bench_job.log'}")
        else:
            continue
        if not (run_dir / "metrics.json").is_file():
            missing.append(failed[-1])
    if not config.dry_run:
        _, table, _ = write_report([sweep_dir], sweep_dir, stem="benchmark", title="dfkd-lab benchmark",
                                missing=missing)
        print("\n" + table + f"\nbenchmark: {sweep_dir / 'benchmark.md'}, {sweep_dir / 'report.html'}")
    for line in failed:
        print(f"dfkd-bench: failed: {line}", file=sys.stderr)
    return failed


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig) -> dict:
    return run_cell(cfg)


if __name__ == "__main__":
    main()
