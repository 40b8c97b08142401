"""dfkd-lab as users get it: a wheel with its configs and teachers inside, run from any directory,
extended by the user's own config dir, writing only under the current directory."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from conftest import FAST, compose_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(str(resources.files("dfkd_lab")))

# A user's own config dir: a teacher and a student that extend shipped ones, a data folder, a
# method, and an experiment that picks them all.
USER_CONF = {
    "teacher/my.yaml": "# my teacher: a LeNet-5-BN with my weights\n"
                       "defaults: [lenet5_bn, _self_]\nckpt: my_teacher.pt\n",
    "student/my_student.yaml": "arch: lenet5\ninit: random\n",
    "data/my_digits.yaml": "defaults: [image_folder, _self_]\nroot: digits\nnum_classes: 10\n"
                           "channels: 1\nmean: [0.5]\nstd: [0.25]\n",
    "method/my_kd.yaml": "# @package _global_\ndefaults:\n  - override /loss: kd\n"
                         "method:\n  name: my_kd\n  module: dfkd_lab.methods.kd.KnowledgeDistillation\n"
                         "  epochs: 7\n",
    "experiment/mine.yaml": "# @package _global_\ndefaults:\n  - override /teacher: my\n"
                         "  - override /student: my_student\n  - override /data: my_digits\n"
                         "  - override /method: my_kd\nseed: 3\n",
}


def write_user_conf(folder: Path) -> Path:
    for name, text in USER_CONF.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def assert_user_experiment(cfg):
    assert (cfg.teacher.arch, cfg.teacher.ckpt, cfg.teacher.zoo) == ("lenet5_bn", "my_teacher.pt", None)
    assert cfg.student.arch == "lenet5"
    assert (cfg.data.name, cfg.data.root, cfg.data.channels, list(cfg.data.std)) == ("image_folder", "digits", 1, [0.25])
    assert (cfg.method.name, cfg.method.epochs, cfg.seed) == ("my_kd", 7, 3)


def user_env() -> dict:
    """The environment of a user's shell: no source tree on the path, no W&B traffic."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROJECT_ROOT")}
    return {**env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the checkout (the build leaves no files in it)."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copy(REPO / "pyproject.toml", work)
    shutil.copy(REPO / "README.md", work)
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(work / "dist"), str(work)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (work / "dist").glob("dfkd_lab-*.whl")
    return built


def test_the_wheel_holds_every_config_and_shipped_teacher(wheel):
    def package_files(folder):
        return {f"dfkd_lab/{p.relative_to(PACKAGE).as_posix()}" for p in (PACKAGE / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}

    names = set(zipfile.ZipFile(wheel).namelist())
    expected = package_files("conf") | package_files("checkpoints") | {"dfkd_lab/py.typed"}
    assert {"dfkd_lab/conf/train.yaml", "dfkd_lab/conf/method/dafl.yaml",
            "dfkd_lab/checkpoints/lenet5_fmnist.pt", "dfkd_lab/checkpoints/lenet5_fmnist.json"} <= expected
    assert expected - names == set()


def test_configs_and_teachers_resolve_through_the_package_resources():
    from dfkd_lab.train import CONF_DIR, CONF_PKG
    from dfkd_lab.zoo import SHIPPED_CHECKPOINTS, zoo_entry

    conf = resources.files(CONF_PKG.removeprefix("pkg://"))  # what Hydra's pkg:// source reads
    assert conf.joinpath("__init__.py").is_file()  # Hydra only reads a package with one
    assert conf.joinpath("train.yaml").is_file() and conf.joinpath("method", "dafl.yaml").is_file()
    assert Path(CONF_DIR) == PACKAGE / "conf" and SHIPPED_CHECKPOINTS == PACKAGE / "checkpoints"
    assert zoo_entry("lenet5_fmnist").path() == PACKAGE / "checkpoints" / "lenet5_fmnist.pt"


def test_runs_read_and_write_under_the_current_directory_not_the_package(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dfkd_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=["method=dafl"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    where = {key: Path(value).resolve() for key, value in
             {"run": cfg.hydra.run.dir, "sweep": cfg.hydra.sweep.dir, "data": cfg.data.root,
              "zoo": cfg.paths.zoo_dir}.items()}
    assert where["run"].is_relative_to(tmp_path / "outputs" / "train" / "dafl")
    assert where["sweep"].is_relative_to(tmp_path / "outputs")
    assert (where["data"], where["zoo"]) == (tmp_path / "data", tmp_path / "checkpoints")


def test_a_users_config_dir_adds_teachers_students_data_methods_and_experiments(tmp_path):
    conf = write_user_conf(tmp_path / "conf")
    cfg = compose_config([f"hydra.searchpath=[file://{conf}]", "experiment=mine"], output_dir=tmp_path / "run")
    assert_user_experiment(cfg)
    (conf / "teacher" / "lenet5_bn.yaml").write_text("arch: vgg8\n")  # named like a shipped one
    shipped = compose_config([f"hydra.searchpath=[file://{conf}]", "method=dafl", "teacher=lenet5_bn"],
                             output_dir=tmp_path / "run")
    assert shipped.teacher.arch == "lenet5_bn"  # the package is searched first
    GlobalHydra.instance().clear()


def test_dfkd_train_config_dir_composes_a_users_experiment(tmp_path):
    write_user_conf(tmp_path / "conf")
    done = subprocess.run([str(Path(sys.executable).with_name("dfkd-train")), "--config-dir", "conf",
                           "experiment=mine", "--cfg", "job"],
                          cwd=tmp_path, env={**user_env(), "PYTHONPATH": str(PACKAGE.parent)},
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "name: my_kd" in done.stdout and "ckpt: my_teacher.pt" in done.stdout
    assert not (tmp_path / "outputs").exists()


def test_a_published_teacher_goes_to_the_users_zoo_and_is_found_there(tmp_path):
    from dfkd_lab.build import build_data, build_teacher
    from dfkd_lab.config import ConfigError
    from dfkd_lab.train import run
    from dfkd_lab.zoo import zoo_entry, zoo_names

    zoo = tmp_path / "zoo"
    before = sorted(p.name for p in (PACKAGE / "checkpoints").iterdir())
    cfg = compose_config([*FAST, "method=teacher", "teacher=lenet5", "method.export.zoo_name=mine",
                          f"paths.zoo_dir={zoo}"], output_dir=tmp_path / "run")
    run(cfg)
    assert sorted(p.name for p in zoo.iterdir()) == ["mine.json", "mine.pt"]
    assert sorted(p.name for p in (PACKAGE / "checkpoints").iterdir()) == before
    assert "mine" in zoo_names(zoo) and "mine" not in zoo_names()
    assert zoo_entry("mine", zoo).path() == zoo / "mine.pt"
    used = compose_config([*FAST, "teacher.zoo=mine", f"paths.zoo_dir={zoo}"], output_dir=tmp_path / "kd")
    build_teacher(used, build_data(used))  # loads it, checking its sha256
    with pytest.raises(ConfigError, match="method.export.zoo_name=mine: that zoo entry already exists"):
        run(compose_config([*FAST, "method=teacher", "teacher=lenet5", "method.export.zoo_name=mine",
                            f"paths.zoo_dir={zoo}"], output_dir=tmp_path / "again"))
    GlobalHydra.instance().clear()


def test_a_user_entry_may_not_take_a_shipped_teachers_name(tmp_path):
    from dfkd_lab.zoo import TeacherError, zoo_entry

    shutil.copy(PACKAGE / "checkpoints" / "lenet5_fmnist.json", tmp_path)
    with pytest.raises(TeacherError, match="'lenet5_fmnist' is both a shipped teacher and"):
        zoo_entry("lenet5_fmnist", tmp_path)


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv with only the wheel installed; its dependencies come from this environment
    (a .pth line, so nothing is downloaded) and cannot shadow the installed package."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], env=user_env(), check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # after the install: pip would take this environment's dfkd-lab for the one asked for
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    return python


@pytest.mark.slow
def test_an_installed_wheel_runs_from_another_directory(wheel, tmp_path):
    python = install(wheel, tmp_path / "venv")
    where = subprocess.run([str(python), "-c", "import dfkd_lab; print(dfkd_lab.__file__)"], env=user_env(),
                           capture_output=True, text=True, check=True).stdout.strip()
    installed = Path(where).parent
    assert installed.is_relative_to(tmp_path / "venv"), where

    def package_files():
        return sorted(p for p in installed.rglob("*") if "__pycache__" not in p.parts)

    before = package_files()
    elsewhere = tmp_path / "elsewhere"
    write_user_conf(elsewhere / "conf")
    dfkd_train = str(tmp_path / "venv" / "bin" / "dfkd-train")
    done = subprocess.run([dfkd_train, "method=dafl", "method.epochs=1", *FAST], cwd=elsewhere,
                          env=user_env(), check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = (elsewhere / "outputs" / "train" / "dafl").glob("*/metrics.json")
    assert 0 <= json.loads(metrics.read_text())["test/acc"] <= 1
    assert package_files() == before  # nothing written into site-packages

    composed = subprocess.run([dfkd_train, "--config-dir", "conf", "experiment=mine", "--cfg", "job"],
                              cwd=elsewhere, env=user_env(), check=False, capture_output=True, text=True, timeout=300)
    assert composed.returncode == 0, composed.stderr[-3000:]
    assert "name: my_kd" in composed.stdout and "ckpt: my_teacher.pt" in composed.stdout
