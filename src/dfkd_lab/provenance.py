"""Where a result was measured: the machine and the project's commit, saved with every run.

Times in a table are only comparable on one machine, and accuracies only at one commit, so
each run's ``metrics.json`` names both and ``dfkd-report`` prints them in the table's header.
"""

import os
import platform
import shlex
import subprocess
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_bf16() -> bool | None:
    """Whether torch has bfloat16 kernels for this CPU (oneDNN's own check: AVX-512 or AMX on x86,
    the BF16 extension on Arm). Without them bf16 autocast takes a slow path: 3 to 11 times slower
    than 32-bit (WRN-16-2 on an AVX2 EPYC: 14.6 s per batch of 128 against 1.3 s; LeNet-5 about 3x).
    None where torch cannot say."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else None
    except RuntimeError:
        return None


def bf16_slow_here(accelerator: str = "auto") -> bool:
    """Whether bf16 would run on a CPU without bf16 kernels: the one test behind both the warning
    for an explicit bf16 trainer and the default trainer's 32-bit fallback."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return on_cpu and cpu_bf16() is False


def preferred_precision(precision: str) -> str:
    """What ``trainer=default`` runs a method's ``method.precision`` in: the method's choice, but
    32-bit for bf16 where ``bf16_slow_here``."""
    if str(precision).startswith("bf16") and bf16_slow_here():
        return "32-true"
    return precision


def gpu_name() -> str | None:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return None


def project_commit(root: Path = PACKAGE_DIR) -> str | None:
    """``git describe``-like: the commit hash of the checkout this package is imported from,
    ``-dirty`` when tracked files were changed or the package has files git does not track; None
    outside a git checkout (an installed package: ``run/version`` names it)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no") or git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def run_command() -> str:
    """The command line that reproduces this run (a zoo entry's recipe, a result's record): its
    overrides, without the ``resume=last`` of a continued segment (its saved overrides came back
    in full, and the segments together equal one uninterrupted run)."""
    from hydra.core.hydra_config import HydraConfig

    from .config import in_multirun

    if not HydraConfig.initialized():
        return ""
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if o != "resume=last"]
    if in_multirun() and hydra_cfg.runtime.choices.get("hydra/sweeper") == "dfkd_optuna":
        overrides.append("hydra.mode=RUN")  # the trial on its own: its hparams_search config would start a study
    return " ".join(["dfkd-train", *map(shlex.quote, overrides)])  # quoted: it pastes back into a shell


def versions() -> dict:
    """The versions a result depends on beyond the project's own code."""
    import pytorch_lightning

    from . import __version__

    return {"run/version": __version__, "env/python": platform.python_version(), "env/torch": torch.__version__,
            "env/lightning": pytorch_lightning.__version__}


def provenance() -> dict:
    """Flat ``metrics.json`` entries: machine (CPU model, threads, bf16 kernels, GPU), project
    commit and version, and the versions of Python, torch and Lightning."""
    return {"machine/cpu": cpu_model(), "machine/cpus": os.cpu_count(),
            "machine/threads": torch.get_num_threads(), "machine/cpu_bf16": cpu_bf16(), "machine/gpu": gpu_name(),
            "run/commit": project_commit(), **versions()}
