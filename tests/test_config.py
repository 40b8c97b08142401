"""Every config file composes; typos and wrong types fail at start, naming the key."""

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf

from dfkd_lab.build import trainer_kwargs
from dfkd_lab.config import JOB_DIR_CHARS, ConfigError, DFQConfig, is_data_free, job_dir_name
from dfkd_lab.train import CONF_DIR
from dfkd_lab.validate import (
    METHOD_BLOCKS,
    block_problems,
    check_overrides,
    import_problem,
    method_problems,
    student_never_trains,
    user_python_path,
)

CONF = Path(CONF_DIR)
GROUPS = ["data", "teacher", "student", "method", "loss", "trainer", "logger", "callbacks", "debug",
          "experiment", "hparams_search"]


# composed in the fast suite; every other option is `slow` (a compose costs ~0.5 s on 2 cores)
FAST = {"data=fashion_mnist", "data=image_folder", "teacher=custom", "student=wrn16_1", "method=kd",
        "method=dafl", "loss=kd_feature", "trainer=ddp_sim", "logger=wandb", "callbacks=default",
        "debug=fdr"}


def installed(module: str) -> bool:
    """find_spec raises, rather than answering None, when a parent package is missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def group_options():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            marks = [] if f"{group}={path.stem}" in FAST else [pytest.mark.slow]
            yield pytest.param(group, path.stem, marks=marks, id=f"{group}={path.stem}")


@pytest.fixture(scope="module", autouse=True)
def hydra_once():
    """Initialise Hydra once for the module: composing is then cheap."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def compose_train(*overrides):
    return compose("train", overrides=[*overrides, "paths.output_dir=/tmp/dfkd-compose-test"])


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_config_option_composes_and_resolves(group, option):
    cfg = compose_train(f"{group}={option}")
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if group in ("data", "teacher", "student", "loss", "trainer"):
        assert container[group] is not None
    if group == "method":
        assert cfg.method.module and cfg.method.name


@pytest.mark.parametrize("override,key", [
    ("trainer.max_stpes=3", "max_stpes"),
    ("method.lrr=1", "lrr"),
    ("data.batchsize=8", "batchsize"),
    ("trainer.max_epochs=abc", "max_epochs"),
    ("method=dafl|method.synthesis.student_steps=1.5", "student_steps"),
    ("data.flip=maybe", "flip"),
])
def test_typos_and_wrong_types_fail_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(*override.split("|"))
    assert key in f"{err.value} {err.value.__cause__}"


@pytest.mark.skipif(not installed("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher is not installed (pip install 'dfkd-lab[slurm]')")
def test_slurm_launcher_preset_composes():
    cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                      "hydra.launcher.tasks_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == cfg.trainer.devices == 4
    assert launcher.timeout_min == 240


# --- one block per concern --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kd", "dafl", "dfq", "teacher", "scratch", "nayer"])
def test_each_method_gets_exactly_the_blocks_its_module_reads(method):
    cfg = compose_train(f"method={method}")
    expected = {"kd": (), "dafl": ("synthesis",), "dfq": ("synthesis", "dfq"), "teacher": ("export",),
                "scratch": (), "nayer": ("synthesis",)}[method]
    assert tuple(b for b in METHOD_BLOCKS if cfg.method.get(b) is not None) == expected
    assert block_problems(cfg.method) == []
    assert is_data_free(cfg.method) == ("synthesis" in expected)


def test_a_block_the_method_ignores_or_lacks_is_named():
    kd = compose_train("method=kd")
    kd.method.dfq = DFQConfig(students=2)
    assert block_problems(kd.method) == [
        ("method.dfq is set but method=kd (KnowledgeDistillation) does not read it; "
         "remove it (this method reads: the common keys only)")]
    dfq = compose_train("method=dfq")
    dfq.method.dfq = None
    assert block_problems(dfq.method) == [
        "method=dfq (DFQDistillation) needs a method.dfq block; see DFQConfig in dfkd_lab/config.py for its keys"]
    dafl = compose_train("method=dafl")
    dafl.method.synthesis.steps_per_epoch = MISSING  # what a method YAML without it gets
    assert "method.synthesis.steps_per_epoch is not set" in block_problems(dafl.method)


def test_old_keys_and_keys_of_an_absent_block_fail_on_the_command_line():
    def composer(overrides):
        return compose_train(*overrides)

    with pytest.raises(ConfigError, match=r"method.student_steps is now method.synthesis.student_steps; "
                                          r"method.zoo_name is now method.export.zoo_name"):
        check_overrides(["method=dafl", "method.student_steps=3", "+method.zoo_name=x"], composer)
    with pytest.raises(ConfigError, match=r"method.synthesis.batch_size: method=kd has no method.synthesis block"):
        check_overrides(["method=kd", "method.synthesis.batch_size=64"], composer)
    check_overrides(["method=dafl", "method.synthesis.batch_size=64"], composer)  # a block it has


def test_a_data_free_run_logs_every_synthesis_round_when_an_epoch_has_few():
    """deepinversion has 6 rounds an epoch: the default interval (10) would log once an epoch."""
    assert trainer_kwargs(compose_train("method=deepinversion"))["log_every_n_steps"] == 6
    assert trainer_kwargs(compose_train("method=dafl"))["log_every_n_steps"] == 10
    assert trainer_kwargs(compose_train("method=kd"))["log_every_n_steps"] == 10


def test_a_run_inside_its_synthesis_warm_up_warns_that_the_student_never_trains(compose_cfg):
    """fastdfkd's first 2 epochs only synthesise: a 2-epoch run ends with the student untouched."""
    def warning(*overrides):
        return student_never_trains(compose_cfg(*overrides, fast=False))

    assert "will not train at all" in warning("method=fastdfkd", "method.epochs=2")
    assert warning("method=fastdfkd", "method.epochs=3") is None
    assert warning("method=kd", "method.epochs=1") is None  # no warm-up


def test_a_method_yaml_of_ones_own_is_told_what_it_lacks(compose_cfg):
    """No name (it ran and was recorded as kd), a synthesizer with no class, a class that cannot be
    imported: each named, with the fix, before the run starts."""
    cfg = compose_cfg("method=dafl", "method.synthesizer._target_=mysynth.Gen")
    cfg.method.name = "kd"  # what a YAML without name: composes to
    found = "; ".join(method_problems(cfg))
    assert "method=dafl sets no method.name, so it would run and be recorded as 'kd'; add name: dafl" in found
    assert ("method.synthesizer._target_=mysynth.Gen cannot be imported: no module named 'mysynth' on Python's path: "
            "a class of your own is found through PYTHONPATH (PYTHONPATH=<the folder holding mysynth.py>") in found
    cfg.method.synthesizer = None
    assert "method.synthesizer names no class: give method.synthesizer._target_" in "; ".join(method_problems(cfg))
    assert method_problems(compose_cfg("method=dafl")) == []
    interpolated = compose_cfg("method=dafl")
    interpolated.method.synthesizer._target_ = "${oc.env:MY_SYNTHESIZER}"  # Hydra's to resolve, not a module name
    assert method_problems(interpolated) == []
    assert import_problem("dfkd_lab.synthesis.generator.NoSuch") == (
        "AttributeError: module 'dfkd_lab.synthesis.generator' has no attribute 'NoSuch'")
    assert import_problem("torch.nn.Conv2d") is None


def test_the_continue_command_carries_the_pythonpath_that_found_the_users_classes(compose_cfg, tmp_path, monkeypatch):
    (tmp_path / "mysynth.py").write_text("from dfkd_lab.synthesis.generator import GeneratorSynthesizer as Gen\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg("method=dafl", "method.synthesizer._target_=mysynth.Gen")
    monkeypatch.setenv("PYTHONPATH", f"/elsewhere:{tmp_path}")
    assert user_python_path(cfg) == f"/elsewhere:{tmp_path}"
    student = compose_cfg("method=kd", "+student.model={_target_:mysynth.Gen}")  # a network of one's own too
    assert user_python_path(student) == f"/elsewhere:{tmp_path}"
    assert user_python_path(compose_cfg("method=dafl")) is None  # only the package's own classes
    monkeypatch.delenv("PYTHONPATH")
    assert user_python_path(cfg) is None


def test_a_sweep_jobs_folder_is_one_folder_of_a_legal_length_whatever_its_overrides():
    assert job_dir_name("method=kd,teacher.ckpt=/tmp/t/x.pt") == "method=kd,teacher.ckpt=_tmp_t_x.pt"  # not nested
    assert job_dir_name(r"trainer.max_time=00\:00\:00\:15") == "trainer.max_time=00:00:00:15"
    many = ",".join(f"method.key{i}=value{i}" for i in range(13))
    other = many.replace("value12", "value13")
    assert len(job_dir_name(many)) == JOB_DIR_CHARS and job_dir_name(many) != job_dir_name(other)
    assert job_dir_name(many)[:100] == many[:100]  # still reads as its overrides


@pytest.mark.parametrize("overrides", [("trainer=ddp_sim",), ("trainer.strategy=ddp_spawn", "trainer.devices=2")])
def test_a_spawning_strategy_shares_tensors_through_files(overrides, compose_cfg):
    """spawn pickles the in-memory test split to each process: by name or by node, the run switches
    torch to file-system sharing (file descriptors fail with "unable to resize file" in containers)."""
    torch.multiprocessing.set_sharing_strategy("file_descriptor")
    try:
        trainer_kwargs(compose_cfg("method=kd", *overrides))
        assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    finally:
        torch.multiprocessing.set_sharing_strategy("file_descriptor")
    trainer_kwargs(compose_cfg("method=kd"))
    assert torch.multiprocessing.get_sharing_strategy() == "file_descriptor"
