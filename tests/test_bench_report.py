"""dfkd-report on fabricated run dirs (fast), the bench's helpers, and dfkd-bench end to end (slow)."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from dfkd_lab import bench, report
from dfkd_lab.config import ConfigError
from dfkd_lab.train import CONF_DIR


def fake_run(path, method, metrics, curve=(), samples=False, uses_teacher=True):
    (path / ".hydra").mkdir(parents=True)
    config = {"method": {"name": method, "uses_teacher": uses_teacher}, "data": {"name": "fashion_mnist"},
              "teacher": {"zoo": "lenet5_fmnist", "arch": None}, "student": {"arch": "lenet5_half"}}
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    if samples:
        (path / "samples").mkdir()
        Image.new("RGB", (40, 40), "red").save(path / "samples" / "latest.png")
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "00_dafl", "dafl",
             {"teacher/acc": 0.9, "test/acc": 0.72, "test/acc_best": 0.75, "cost/synthesis_s": 40.0,
              "cost/kd_s": 10.0, "cost/images": 2000.0, "cost/images_per_s": 50.0, "mem/peak_mb": 900.0,
              "time/total_s": 55.0},
             curve=[{"epoch": 0, "step": 5, "time_s": 10.0, "val/acc": 0.5},
                    {"epoch": 1, "step": 10, "time_s": 20.0, "val/acc": 0.72}], samples=True)
    fake_run(root / "01_scratch", "scratch", {"test/acc": 0.88, "test/acc_best": 0.89, "time/total_s": 30.0},
             curve=[{"epoch": 0, "step": 5, "time_s": 15.0, "val/acc": 0.88}], uses_teacher=False)
    return root


def test_table_has_every_column_and_the_numbers(runs, tmp_path):
    rows, table = report.write_report([runs], tmp_path / "out", stem="benchmark")
    header = table.splitlines()[0]
    for _, name in report.COLUMNS:
        assert f" {name} |" in header
    dafl, scratch = rows
    assert dafl["method"] == "dafl" and dafl["run"] == str(runs / "00_dafl")
    assert dafl["pct_teacher"] == pytest.approx(80.0)
    assert dafl["acc_best"] == pytest.approx(75.0)
    assert "| dafl | fashion_mnist | lenet5_fmnist | lenet5_half | 90.00 | 72.00 | 75.00 | 80.0 | 40.0 | 10.0 | 2000 |" in table
    assert scratch["teacher"] is None and "pct_teacher" not in scratch  # no teacher: no ratio
    saved = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["dafl", "scratch"]
    assert (tmp_path / "out" / "benchmark.md").read_text().startswith(header)


def test_report_writes_plots_and_html(runs, tmp_path):
    out = tmp_path / "out"
    report.main([str(runs), "--out", str(out)])
    curves = Image.open(out / "accuracy_vs_time.png")
    assert curves.size == (960, 560)
    # a drawn line: pixels of the first run's colour exist inside the plot
    rgb = tuple(int(report.PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))
    assert rgb in {c for _, c in curves.convert("RGB").getcolors(1 << 20)}
    assert Image.open(out / "samples.png").width > 0
    page = (out / "report.html").read_text()
    assert '<table id="results">' in page and page.count("<tr>") == 3
    assert 'src="accuracy_vs_time.png"' in page and 'src="samples.png"' in page
    assert (out / "report.md").is_file() and (out / "report.json").is_file()


def test_report_without_curves_or_samples(tmp_path):
    fake_run(tmp_path / "r", "kd", {"test/acc": 0.5})
    (tmp_path / "r" / "curve.jsonl").unlink()
    rows, _ = report.write_report([tmp_path], tmp_path)
    assert rows[0]["acc"] == pytest.approx(50.0)
    assert not (tmp_path / "accuracy_vs_time.png").exists() and not (tmp_path / "samples.png").exists()
    assert "No accuracy curves" in (tmp_path / "report.html").read_text()


def test_report_rejects_dirs_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])
    assert "no run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])


def test_budget_becomes_lightning_max_time():
    assert bench.max_time(120) == "00:00:02:00"
    assert bench.max_time(90061) == "01:01:01:01"
    with pytest.raises(ConfigError, match="budget_s"):
        bench.max_time(0)


def test_default_methods_are_the_data_free_configs_then_references():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        methods = bench.default_methods(["kd", "scratch"], exclude=["fastdfkd"])
    GlobalHydra.instance().clear()
    assert "dafl" in methods and methods[-2:] == ["kd", "scratch"]
    assert "teacher" not in methods and "fastdfkd" not in methods and methods.count("kd") == 1
    with pytest.raises(ConfigError, match="no_such_method"):
        bench.check_methods(["dafl", "no_such_method"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_html_renders_in_headless_chromium(runs, tmp_path):
    out = tmp_path / "out"
    report.write_report([runs], out)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=60).stdout
    assert '<table id="results">' in dom and "dafl" in dom and "scratch" in dom
    shot = out / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                   check=True, capture_output=True, timeout=60)
    colors = Image.open(shot).convert("RGB").getcolors(1 << 24)
    assert len(colors) > 20  # not a blank page: text, table borders and the plots were drawn
    assert (255, 0, 0) in {c for _, c in colors}  # the red sample grid loaded by relative path


@pytest.mark.slow
def test_bench_runs_two_methods_and_writes_the_table(tmp_path):
    out = tmp_path / "bench"
    tiny = '["trainer=cpu","trainer.max_epochs=1","trainer.limit_train_batches=2","trainer.limit_val_batches=1",' \
           '"trainer.limit_test_batches=1","trainer.enable_progress_bar=false","logger=none"]'
    done = subprocess.run([sys.executable, "-m", "dfkd_lab.bench", "methods=[scratch,dafl]", "budget_s=60",
                           f"overrides={tiny}", f"hydra.run.dir={out}"],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads((out / "benchmark.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["scratch", "dafl"]
    assert saved["columns"] == [k for k, _ in report.COLUMNS]
    dafl = saved["rows"][1]
    for key in ("teacher_acc", "acc", "acc_best", "pct_teacher", "synthesis_s", "kd_s", "images", "peak_mb"):
        assert dafl[key] >= 0, key
    assert "| dafl |" in (out / "benchmark.md").read_text() and "| dafl |" in done.stdout
    assert (out / "report.html").is_file()
    config = yaml.safe_load((out / "01_dafl" / ".hydra" / "config.yaml").read_text())
    assert config["trainer"]["max_time"] == "00:00:01:00" and config["task_name"] == "bench-bench"


def test_job_command_carries_budget_group_and_setting(tmp_path):
    cfg = OmegaConf.structured(bench.BenchConfig(budget_s=90, overrides=["data=mnist"]))
    cmd = bench.job_command("dafl", tmp_path / "00_dafl", cfg, "bench-x")
    assert cmd[1:3] == ["-m", "dfkd_lab.train"]
    assert cmd[3:] == ["method=dafl", "task_name=bench-x", f"hydra.run.dir={tmp_path / '00_dafl'}",
                       "trainer.max_time=00:00:01:30", "data=mnist"]
    cfg.budget_s = None
    assert not any(c.startswith("trainer.max_time") for c in bench.job_command("kd", tmp_path, cfg, "g"))
