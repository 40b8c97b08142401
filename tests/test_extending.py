"""A user's own method (examples/my_method, walked through in docs/extending.md): one Python
file and one YAML in a folder outside the repository, run by dfkd-train without editing the
package."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from dfkd_lab import train
from dfkd_lab.config import searchpath_override
from dfkd_lab.resume import resume_args
from dfkd_lab.train import CONF_DIR

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_method"
TINY = ["trainer=cpu", "logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "method.synthesis.batch_size=16", "method.synthesis.student_steps=2", "method.synthesizer.steps=3"]


def user_copy(tmp_path) -> Path:
    """The example, copied where a user would keep it: anywhere but in this repository."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "my_method"))


def test_the_example_method_trains_through_the_cli_with_its_own_registered_term(tmp_path):
    user = user_copy(tmp_path)
    run_dir = tmp_path / "run"
    path = os.pathsep.join(p for p in (str(user), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), "--config-dir", str(user / "conf"),
           "method=my_method", *TINY, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, check=False, cwd=user, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["synth/logit_margin"] > 0  # the user's term was computed, optimised and logged
    assert "synth/bn" in metrics and "synth/target_ce" not in metrics  # built in; weight 0: not computed
    # resume=<run dir> (here: of the finished run, to train it longer) searches the user's folder
    # again (overrides.yaml does not record --config-dir)
    assert f"hydra.searchpath=['file://{user / 'conf'}']" in resume_args([f"resume={run_dir}", "trainer.max_epochs=2"])


def test_the_bench_runs_the_example_method_from_the_users_config_dir(tmp_path):
    """dfkd-bench --config-dir finds the user's method and every run it starts searches that folder."""
    user = user_copy(tmp_path)
    bench_dir = tmp_path / "bench"
    path = os.pathsep.join(p for p in (str(user), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"}
    overrides = "[" + ",".join(f'"{o}"' for o in TINY) + "]"
    cmd = [str(Path(sys.executable).with_name("dfkd-bench")), "--config-dir", str(user / "conf"),
           "methods=[my_method]", "seeds=[0]", "threads=1", f"overrides={overrides}", f"hydra.sweep.dir={bench_dir}"]
    done = subprocess.run(cmd, check=False, cwd=user, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((bench_dir / "benchmark.json").read_text())["rows"]
    assert [(r["method"], r["status"]) for r in rows] == [("my_method", "1 finished")]
    run = json.loads((bench_dir / "default/my_method/seed0/metrics.json").read_text())
    assert run["synth/logit_margin"] > 0  # the user's own term ran inside the bench's run
    assert f"--config-dir {user / 'conf'}" in (bench_dir / "command.txt").read_text()  # the command to continue it


def test_the_bench_refuses_an_unknown_method_naming_the_users_folders(tmp_path):
    user = user_copy(tmp_path)
    cmd = [str(Path(sys.executable).with_name("dfkd-bench")), "--config-dir", str(user / "conf"),
           "methods=[my_methd]", f"hydra.sweep.dir={tmp_path / 'bench'}"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "methods=['my_methd'] not found" in done.stderr
    assert f"file://{user / 'conf'}" in done.stderr and "my_method" in done.stderr  # where it looked, what it found
    assert not (tmp_path / "bench" / "default").exists()


def test_hydra_searchpath_finds_the_method_as_config_dir_does(tmp_path):
    user = user_copy(tmp_path)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["method=my_method", f"hydra.searchpath=[file://{user / 'conf'}]"])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.method.synthesizer._target_ == "my_method.MarginInversion"
    assert dict(cfg.loss.weights) == {"kd": 1.0, "target_ce": 0.0, "bn": 10.0, "logit_margin": 1.0}


@pytest.mark.parametrize("where", ["--config-dir", "hydra.searchpath"])
def test_a_block_the_users_method_lacks_is_named_before_hydra_starts(monkeypatch, capsys, tmp_path, where):
    """The check of block keys composes the user's method too (found through their folder)."""
    conf = user_copy(tmp_path) / "conf"
    folder = ["--config-dir", str(conf)] if where == "--config-dir" else [f"hydra.searchpath=[file://{conf}]"]
    monkeypatch.setattr(sys, "argv", ["dfkd-train", *folder, "method=my_method", "method.dfq.quant_bits=4",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    assert "method.dfq.quant_bits: method=my_method has no method.dfq block" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_searchpath_override_keeps_folder_names_hydra_would_split_or_misread():
    paths = ["file:///tmp/a,b", "file:///tmp/it's (x) #1", "pkg://my_package.conf"]
    (override,) = searchpath_override(paths)
    assert OverridesParser.create().parse_overrides([override])[0].value() == paths
    assert searchpath_override([]) == []


def test_logit_margin_is_zero_once_the_target_leads_by_the_margin():
    spec = importlib.util.spec_from_file_location("my_method", EXAMPLE / "my_method.py")
    my_method = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(my_method)
    logits = torch.tensor([[4.0, 1.0, 0.0]])
    assert my_method.logit_margin(logits, torch.tensor([0]), margin=2.0).item() == 0.0  # leads by 3
    assert my_method.logit_margin(logits, torch.tensor([1]), margin=2.0).item() == 5.0  # trails by 3
