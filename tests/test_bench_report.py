"""dfkd-report on fabricated run dirs (fast), dfkd-bench's cells, skipping and launchers."""

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from dfkd_lab import bench, report, stop
from dfkd_lab.callbacks.budget import TeacherPassBudget
from dfkd_lab.callbacks.metrics import write_final_metrics
from dfkd_lab.config import ConfigError, hydra_quoted
from dfkd_lab.provenance import provenance
from dfkd_lab.train import CONF_DIR

MACHINE = {"machine/cpu": "Test CPU 9000", "machine/cpus": 2, "machine/threads": 1, "machine/gpu": None,
           "run/commit": "abc123def456"}


def fake_run(path, method, metrics, curve=(), samples=False, uses_teacher=True, seed=0, overrides=(),
             max_time=None):
    (path / ".hydra").mkdir(parents=True)
    synthesis = {"steps_per_epoch": 10} if uses_teacher else None  # data-free where a teacher is used
    config = {"method": {"name": method, "uses_teacher": uses_teacher, "synthesis": synthesis}, "data": {"name": "fashion_mnist"},
              "teacher": {"zoo": "lenet5_fmnist", "arch": None}, "student": {"arch": "lenet5_half"},
              "seed": seed, "trainer": {"max_time": max_time}}
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"method={method}", f"seed={seed}", "task_name=bench-x", *overrides]))
    (path / "metrics.json").write_text(json.dumps({**MACHINE, **metrics}))
    (path / "curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    if samples:
        (path / "samples").mkdir()
        Image.new("RGB", (40, 40), "red").save(path / "samples" / "latest.png")
    return path


def curve(*points):
    return [{"time_s": t, "val/acc": a, "cost/teacher_forwards": 10 * t} for t, a in points]


@pytest.fixture
def runs(tmp_path):
    """dafl over three seeds (plus a stopped fourth), dafl with another setting, scratch."""
    root = tmp_path / "runs"
    for seed, acc in enumerate([0.70, 0.72, 0.77]):
        fake_run(root / f"dafl/seed{seed}", "dafl",
                 {"teacher/acc": 0.9, "test/acc": acc, "test/acc_best": acc + 0.01, "cost/synthesis_s": 40.0 + seed,
                  "cost/kd_s": 10.0, "cost/images": 2000.0, "cost/images_per_s": 20.0 + 10 * seed,
                  "cost/teacher_forwards": 300.0,
                  "mem/peak_mb": 900.0 + 10 * seed, "time/total_s": 55.0},
                 curve=curve((10, 0.3 + seed / 10), (20, 0.5), (30, 0.6), (60, acc), (90, acc)),
                 seed=seed, max_time="00:00:01:40", samples=seed == 0)
    fake_run(root / "dafl/seed3", "dafl", {"test/acc": 0.1}, curve=curve((10, 0.1)), seed=3)  # killed
    fake_run(root / "dafl_oh/seed0", "dafl", {"test/acc": 0.5, "time/total_s": 50.0, "status": "finished"},
             curve=curve((10, 0.4), (20, 0.5)), overrides=["loss.weights.oh=0.5"])
    fake_run(root / "scratch/seed0", "scratch", {"test/acc": 0.88, "test/acc_best": 0.89, "time/total_s": 30.0},
             curve=[{"time_s": 15.0, "val/acc": 0.88}], uses_teacher=False)
    return root


def by_differs(rows, method):
    return {r["differs"]: r for r in rows if r["method"] == method}


def test_seed_aggregation_matches_hand_computed_mean_and_std(runs, tmp_path):
    rows, table, _ = report.write_report([runs], tmp_path / "out", stem="benchmark")
    dafl = by_differs(rows, "dafl")
    plain, oh = dafl[""], dafl["loss.weights.oh=0.5"]
    assert plain["seeds"] == "0,1,2" and plain["n"] == 3  # the killed seed 3 is not averaged
    assert plain["status"] == "3 finished, 1 stopped (no final metrics)"
    # 70, 72, 77: mean 73, deviations -3, -1, 4 -> sample variance 26 / 2 = 13
    assert plain["acc_mean"] == pytest.approx(73.0)
    assert plain["acc_std"] == pytest.approx(math.sqrt(13))
    assert plain["acc_best_mean"] == pytest.approx(74.0)
    assert plain["synthesis_s_mean"] == pytest.approx(41.0) and plain["synthesis_s_std"] == pytest.approx(1.0)
    assert plain["peak_mb_mean"] == pytest.approx(910.0) and plain["teacher_passes_mean"] == 300
    # budget 100 s: a quarter is 25 s (last evaluation at 20 s), a half 50 s (at 30 s)
    assert plain["acc_q1_mean"] == pytest.approx(50.0) and plain["acc_q1_std"] == pytest.approx(0.0)
    assert plain["acc_q2_mean"] == pytest.approx(60.0)
    assert oh["n"] == 1 and oh["acc_mean"] == pytest.approx(50.0) and oh["acc_std"] is None
    assert by_differs(rows, "scratch")[""]["teacher_acc_mean"] is None
    assert "| dafl | synthetic | fashion_mnist | lenet5_fmnist | lenet5_half | - | 0,1,2 | 73.00 ± 3.61 | 74.00 ± 3.61 |" in table
    assert "| dafl | synthetic | fashion_mnist | lenet5_fmnist | lenet5_half | loss.weights.oh=0.5 | 0 | 50.00 |" in table


def test_tables_on_disk_carry_header_runs_and_status(runs, tmp_path):
    out = tmp_path / "out"
    report.write_report([runs], out, stem="benchmark")
    text = (out / "benchmark.md").read_text()
    assert "- machine: Test CPU 9000 (2 CPUs, 1 threads), GPU: none" in text
    assert "- commit: abc123def456" in text and "- runs: 6 (5 finished)" in text
    assert "| stopped (no final metrics) |" in text  # the killed run is listed as such
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["header"]["commit"] == ["abc123def456"] and len(saved["rows"]) == 3 and len(saved["runs"]) == 6
    lines = (out / "benchmark.csv").read_text().splitlines()
    assert lines[0].startswith("method,transfer,data,teacher,student,differs,seeds,n,status,acc_mean,acc_std")
    assert len(lines) == 4 and lines[1].startswith('dafl,synthetic,fashion_mnist,lenet5_fmnist,lenet5_half,,"0,1,2",3,')
    assert lines[3].startswith("scratch,real data,")


@pytest.mark.parametrize("kernels, shown", [(True, "1 threads, bf16 kernels)"), (False, "1 threads, no bf16 kernels)")])
def test_the_header_says_whether_the_cpu_had_bf16_kernels(tmp_path, kernels, shown):
    fake_run(tmp_path / "runs/dafl/seed0", "dafl", {"test/acc": 0.7, "status": "finished", "machine/cpu_bf16": kernels})
    report.write_report([tmp_path / "runs"], tmp_path / "out", stem="b")
    assert f"- machine: Test CPU 9000 (2 CPUs, {shown}, GPU: none" in (tmp_path / "out" / "b.md").read_text()


def test_tables_are_dated_by_when_their_runs_ended_not_when_the_report_was_made(tmp_path):
    for day, method in (("2026-11-30 13:02 UTC", "dafl"), ("2026-12-01 05:08 UTC", "scratch")):
        fake_run(tmp_path / "runs" / method, method, {"test/acc": 0.5, "status": "finished", "run/ended": day})
    rows, _, head = report.write_report([tmp_path / "runs"], tmp_path / "out", stem="benchmark")
    assert head["ended"] == ["2026-11-30 13:02 UTC", "2026-12-01 05:08 UTC"]
    assert "- runs: 2 (2 finished), ended 2026-11-30 13:02 UTC to 2026-12-01 05:08 UTC, report made" in \
        (tmp_path / "out" / "benchmark.md").read_text()
    assert report.headline(rows, head, "r.md").startswith(
        "Measured 2026-11-30 13:02 UTC to 2026-12-01 05:08 UTC on Test CPU 9000")
    # runs from before the date was recorded: the report's own date, as before
    assert report.headline(rows, {**head, "ended": None}, "r.md").startswith(f"Measured {head['date']} on")


def test_metrics_on_disk_say_when_the_run_ended(tmp_path):
    write_final_metrics(tmp_path, {"test/acc": 0.5}, "finished")
    ended = json.loads((tmp_path / "metrics.json").read_text())["run/ended"]
    assert datetime.strptime(ended, "%Y-%m-%d %H:%M UTC").year >= 2026


def test_time_to_reach_another_rows_accuracy(runs, tmp_path):
    out = tmp_path / "out"
    report.write_report([runs], out, stem="benchmark", reach=["dafl", "scratch"])
    reach = {(r["row"], r["target"]): r for r in json.loads((out / "benchmark.json").read_text())["reach"]}
    assert len(reach) == 6  # ordered pairs of the three rows
    # dafl seeds first evaluate at >= 50% (the oh row's final) at 20, 20 and 10 s; 10 passes a second
    to_oh = reach[("dafl", "dafl loss.weights.oh=0.5")]
    assert to_oh["reached"] == "3 of 3" and to_oh["target_acc"] == pytest.approx(50.0)
    assert to_oh["time_s"] == pytest.approx([50 / 3, math.sqrt(100 / 3)])
    assert to_oh["passes"] == pytest.approx([500 / 3, math.sqrt(10000 / 3)])
    assert reach[("dafl", "scratch")]["reached"] == "0 of 3" and reach[("dafl", "scratch")]["time_s"] == [None, None]
    assert reach[("scratch", "dafl")]["reached"] == "1 of 1" and reach[("scratch", "dafl")]["time_s"] == [15.0, None]
    text = (out / "benchmark.md").read_text()
    assert "| dafl | dafl loss.weights.oh=0.5 | 50.00 | 3 of 3 | 17 ± 6 | 167 ± 58 |" in text
    assert "| dafl | scratch | 88.00 | 0 of 3 | - | - |" in text
    with pytest.raises(ValueError, match="no runs of nayer to compare"):
        report.write_report([runs], out, reach=["nayer"])


def test_run_dirs_are_shown_relative_to_the_report_or_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.shown_path(tmp_path / "out" / "a" / "seed0", tmp_path / "out") == "a/seed0"
    assert report.shown_path(tmp_path / "outputs" / "bench" / "x", tmp_path / "docs") == "outputs/bench/x"
    assert report.shown_path(Path("/elsewhere/run"), tmp_path / "docs") == "/elsewhere/run"


def test_transfer_column_tells_synthetic_proxy_and_real_data_apart():
    assert report.transfer_data({"method": {"synthesis": {"steps_per_epoch": 5}}}) == "synthetic"
    assert report.transfer_data({"method": {"synthesis": {"steps_per_epoch": 5}},
                                 "proxy": {"name": "cifar10", "classes": [5, 6]}}) == "proxy cifar10 classes 5,6"
    assert report.transfer_data({"method": {"synthesis": None}, "proxy": None}) == "real data"


README = "# Tool\n\nintro\n\n<!-- dfkd-report benchmark -->\nold figures\n<!-- /dfkd-report benchmark -->\n\nrest\n"


def test_readme_headline_replaces_only_its_block_and_ranks_rows(runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    (runs / "command.txt").write_text("dfkd-bench budget_s=100 name=x")
    report.main([str(runs), "-o", str(tmp_path / "docs" / "results"), "--stem", "benchmark", "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Tool\n\nintro\n\n<!-- dfkd-report benchmark -->\n") and text.endswith(
        "<!-- /dfkd-report benchmark -->\n\nrest\n") and "old figures" not in text
    assert "Test CPU 9000 (2 CPUs, 1 threads), GPU: none, commit abc123def456; mean ± std over seeds 0, 1, 2" in text
    assert "```bash\ndfkd-bench budget_s=100 name=x\n```" in text
    assert "[docs/results/benchmark.md](docs/results/benchmark.md)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    # by final accuracy: scratch 88, dafl 73 over seeds 0-2 (std of 70, 72, 77), dafl with oh=0.5 at 50
    assert [line.split(" | ")[0] for line in table] == ["| scratch", "| dafl", "| dafl (loss.weights.oh=0.5)"]
    assert table[0].split(" | ")[1] == "real data" and "73.00 ± 3.61" in table[1]


def test_share_of_a_reference_row_and_images_per_s_in_table_and_headline(runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "out"
    report.main([str(runs), "-o", str(out), "--stem", "benchmark", "--relative-to", "scratch", "--readme", str(readme),
                 "--readme-columns", "method", "acc", "share", "images_per_s"])
    rows = {r["differs"] + r["method"]: r for r in json.loads((out / "benchmark.json").read_text())["rows"]}
    # dafl 73 ± sqrt(13) against scratch's 88; images/s 20, 30, 40 over seeds 0-2
    assert rows["dafl"]["share_mean"] == pytest.approx(100 * 73 / 88)
    assert rows["dafl"]["share_std"] == pytest.approx(100 * math.sqrt(13) / 88)
    assert rows["scratch"]["share_mean"] == pytest.approx(100.0) and rows["scratch"]["images_per_s_mean"] is None
    assert rows["dafl"]["images_per_s_mean"] == pytest.approx(30.0) and rows["dafl"]["images_per_s_std"] == pytest.approx(10.0)
    assert "| final acc % | best acc % | % of scratch acc | acc % at 1/4 budget |" in (out / "benchmark.md").read_text()
    assert (out / "benchmark.csv").read_text().splitlines()[0].endswith("share_mean,share_std")
    text = readme.read_text()
    assert "| method | final acc % | % of scratch acc | images/s |" in text
    assert "| dafl | 73.00 ± 3.61 | 83.0 ± 4.1 | 30.0 ± 10.0 |" in text and "| scratch | 88.00 | 100.0 | - |" in text


@pytest.mark.parametrize("args, message", [
    (["--readme-columns", "method", "acc_typo"], "unknown column acc_typo; columns: method transfer"),
    (["--readme-columns", "method", "share"], "the share column needs --relative-to METHOD"),
    (["--relative-to", "nayer"], "relative to nayer: needs one row of it with a final accuracy, 0 rows of it"),
    (["--reach", "nayer"], "no runs of nayer to compare"),
])
def test_bad_headline_columns_or_reference_are_refused_with_the_readme_unchanged(runs, tmp_path, capsys, args, message):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(SystemExit):
        report.main([str(runs), "-o", str(tmp_path / "out"), "--stem", "benchmark", "--readme", str(readme), *args])
    assert message in capsys.readouterr().err
    assert readme.read_text() == README and not (tmp_path / "out").exists()


def test_readme_without_the_markers_is_refused_unchanged(runs, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Tool\nno markers\n")
    with pytest.raises(SystemExit):
        report.main([str(runs), "-o", str(tmp_path / "out"), "--readme", str(readme)])
    assert "'<!-- dfkd-report report -->'" in capsys.readouterr().err
    assert readme.read_text() == "# Tool\nno markers\n" and not (tmp_path / "out").exists()


def test_a_record_that_does_not_parse_is_named(runs, tmp_path, capsys):
    broken = next(runs.rglob("metrics.json"))
    broken.write_text('{"test/acc": 0.5,')
    with pytest.raises(SystemExit):
        report.main([str(runs), "-o", str(tmp_path / "out")])
    assert f"{broken} is not valid JSON" in capsys.readouterr().err
    assert report.finished_metrics(broken.parent) is None  # the bench runs such a cell again


def test_status_field_wins_over_the_old_rule():
    assert report.run_status({"status": "failed: SynthesisDiverged"}) == "failed: SynthesisDiverged"
    assert report.run_status({"status": "failed: InstantiationException: Error in call\nfull_key: x"}) == \
        "failed: InstantiationException: Error in call full_key: x"
    assert report.run_status({"status": "finished"}) == "finished"
    assert report.run_status({"test/acc": 0.5, "time/total_s": 3.0}) == "finished"  # before the field
    assert report.run_status({"test/acc": 0.5}).startswith("stopped")


def test_budget_axis_and_accuracy_reached():
    run = report.Run(None, {"trainer": {"max_time": "00:00:02:00"}}, {}, curve=curve((10, 0.2), (70, 0.4)))
    assert report.budget(run) == ("time_s", 120.0)
    assert report.accuracy_by(run.curve, "time_s", 30) == pytest.approx(20.0)
    assert report.accuracy_by(run.curve, "time_s", 5) is None  # no evaluation yet
    run.config["callbacks"] = {"teacher_pass_budget": {"max_passes": 800}}
    assert report.budget(run) == ("cost/teacher_forwards", 800.0)
    assert report.accuracy_by(run.curve, "cost/teacher_forwards", 400) == pytest.approx(20.0)
    assert report.max_time_s({"minutes": 2, "seconds": 3}) == 123


def test_report_draws_banded_curves_and_html(runs, tmp_path):
    out = tmp_path / "out"
    (runs / "command.txt").write_text("dfkd-bench budget_s=100 name=x")
    report.main([str(runs), "--out", str(out)])
    for name in ("accuracy_vs_time.png", "accuracy_vs_teacher_passes.png"):
        png = Image.open(out / name).convert("RGB")
        assert png.size == (960, 560)
        colors = {c for _, c in png.getcolors(1 << 20)}
        assert (31, 119, 180) in colors  # matplotlib's first colour: the dafl mean line
    assert Image.open(out / "samples.png").width > 0
    page = (out / "report.html").read_text()
    assert '<table id="results">' in page and '<table id="runs">' in page
    assert 'src="accuracy_vs_time.png"' in page and 'src="accuracy_vs_teacher_passes.png"' in page
    assert "Test CPU 9000" in page and "abc123def456" in page
    assert "<code>dfkd-bench budget_s=100 name=x</code>" in page and "`" not in page  # Markdown code as HTML
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()


def test_seed_band_is_mean_and_std_of_the_accuracy_reached():
    runs = [report.Run(None, {}, {}, curve=curve((10, 0.2), (20, 0.4))),
            report.Run(None, {}, {}, curve=curve((15, 0.6), (30, 0.8)))]
    xs, means, stds = report.seed_band(runs, "time_s")
    assert xs == [15, 20]  # where both runs have been evaluated
    assert means == pytest.approx([40.0, 50.0]) and stds[0] == pytest.approx(math.sqrt(2) * 20)
    # one evaluation per seed, at other times: the row is still drawn, where both have one
    once = [report.Run(None, {}, {}, curve=curve((10, 0.2))), report.Run(None, {}, {}, curve=curve((12, 0.4)))]
    assert report.seed_band(once, "time_s") == ([12], [pytest.approx(30.0)], [pytest.approx(math.sqrt(2) * 10)])


def test_report_without_curves_or_samples(tmp_path):
    fake_run(tmp_path / "r", "kd", {"test/acc": 0.5, "time/total_s": 1.0})
    (tmp_path / "r" / "curve.jsonl").unlink()
    rows, _, _ = report.write_report([tmp_path], tmp_path)
    assert rows[0]["acc_mean"] == pytest.approx(50.0)
    assert not (tmp_path / "accuracy_vs_time.png").exists() and not (tmp_path / "samples.png").exists()
    assert "No accuracy curves" in (tmp_path / "report.html").read_text()


def test_report_rejects_dirs_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])
    assert "no run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])


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
    assert (31, 119, 180) in {c for _, c in colors}  # the accuracy figure loaded by relative path


# --- provenance and the pass budget ----------------------------------------------------------
def test_provenance_names_machine_and_commit():
    info = provenance()
    assert info["machine/cpu"] and info["machine/cpus"] >= 1 and info["machine/threads"] >= 1
    assert info["machine/gpu"] is None or "x " in info["machine/gpu"]
    assert info["machine/cpu_bf16"] in (True, False, None)
    commit = info["run/commit"]
    assert commit is None or len(commit.removesuffix("-dirty")) == 12
    assert info["env/torch"] == torch.__version__ and info["run/version"] and info["env/python"].count(".") == 2


def test_a_run_records_the_commit_it_started_from(compose_cfg, monkeypatch):
    """A commit made while a run trains (hours, on CIFAR) must not be credited with its result."""
    from dfkd_lab import train

    head = {"run/commit": "started-here"}
    monkeypatch.setattr(train, "provenance", lambda: dict(head))
    build_module = train.build_module

    def build_then_commit(*args):
        head["run/commit"] = "committed-meanwhile"
        return build_module(*args)

    monkeypatch.setattr(train, "build_module", build_then_commit)
    assert train.run(compose_cfg("method=kd"))["run/commit"] == "started-here"


def test_a_teacher_run_is_listed_under_the_network_it_trains(tmp_path):
    run_dir = fake_run(tmp_path / "t", "teacher", {"test/acc": 0.9}, uses_teacher=False)
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    config["method"]["trains"], config["teacher"] = "teacher", {"zoo": None, "arch": "resnet34"}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    row = report.run_row(report.load_run(run_dir))
    assert (row["teacher"], row["student"]) == (None, "resnet34")


def test_a_teacher_given_by_its_weights_file_is_named_by_that_file(tmp_path):
    """teacher.ckpt is what the run loaded, whatever zoo entry the method's default names."""
    run_dir = fake_run(tmp_path / "r", "fastdfkd", {"test/acc": 0.4})
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    config["teacher"] = {"zoo": "lenet5_bn_fc_fmnist", "arch": None, "ckpt": "/runs/t/lenet5_bn_fc_image_folder.pt"}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    assert report.run_row(report.load_run(run_dir))["teacher"] == "lenet5_bn_fc_image_folder.pt"


def test_teacher_pass_budget_stops_at_the_count():
    budget = TeacherPassBudget(max_passes=5)
    trainer = SimpleNamespace(should_stop=False)
    module = SimpleNamespace(cost=SimpleNamespace(teacher_forwards=torch.tensor(4.0)))
    budget.on_train_batch_end(trainer, module, None, None, 0)
    assert trainer.should_stop is False
    module.cost.teacher_forwards += 1
    budget.on_train_batch_end(trainer, module, None, None, 0)
    assert trainer.should_stop is True
    budget.on_train_batch_end(trainer, SimpleNamespace(), None, None, 0)  # no meter (kd): no effect
    with pytest.raises(ConfigError, match="max_passes"):
        TeacherPassBudget(0)


# --- dfkd-bench --------------------------------------------------------------------------------
def test_budget_becomes_lightning_max_time():
    assert bench.max_time(120) == "00:00:02:00"
    assert bench.max_time(90061) == "01:01:01:01"
    with pytest.raises(ConfigError, match="budget_s"):
        bench.max_time(0)


@pytest.fixture
def bench_hydra():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_default_methods_are_the_data_free_configs_then_references(bench_hydra):
    methods = bench.default_methods(["kd", "scratch"], exclude=["fastdfkd"])
    assert "dafl" in methods and methods[-2:] == ["kd", "scratch"]
    assert "teacher" not in methods and "fastdfkd" not in methods and methods.count("kd") == 1
    with pytest.raises(ConfigError, match="no_such_method"):
        bench.check_methods(["dafl", "no_such_method"])


def test_cells_cross_settings_methods_and_seeds_and_check_first(bench_hydra):
    cfg = compose("bench", overrides=["methods=[dafl,kd]", "seeds=[0,1]", '+settings.small=["data.batch_size=8"]',
                                      '+settings.big=["data.batch_size=64"]'])
    cells = bench.cells(cfg)
    assert len(cells) == 8 and cells[0] == ("small", "dafl", 0) and cells[-1] == ("big", "kd", 1)
    for bad, message in (("seeds=[]", "seeds"), ("budget_s=-1", "budget_s"), ("budget_passes=0", "budget_passes"),
                         ("methods=[dafl,nope]", "nope"), ('overrides=["hydra.searchpath=[file:///x]"]', "hydra.searchpath"),
                         ("+threds=1", "threds: not a setting of dfkd-bench .*threads")):
        with pytest.raises(ConfigError, match=message):
            bench.cells(compose("bench", overrides=["methods=[dafl]", bad]))


def test_overrides_and_settings_that_do_not_compose_are_refused_before_any_run(bench_hydra):
    cfg = compose("bench", overrides=["methods=[dafl,kd]", 'overrides=["data.batch_size=8"]',
                                      '+settings.fast=["method.epochs=1"]', '+settings.typo=["method.epoch=1"]'])
    with pytest.raises(ConfigError, match=r"method=dafl does not compose with the overrides and settings.typo: "
                                          r"Could not override 'method.epoch'\.$"):
        bench.check_cell_configs(cfg, bench.cells(cfg))
    for bad, message in (('overrides=["data.batchsize=8"]', "data.batchsize"),
                         ('overrides=["method.synthesizer.ngf=8"]', "method=kd does not compose with the overrides: .*method.synthesizer.ngf"),
                         ('overrides=["method.dfq.quant_bits=4"]', "does not compose with the overrides: an override sets a key below a block"),
                         ('overrides=["+method.epchs=3"]', "method=dafl with the overrides: method.epchs is not a setting"),
                         ('overrides=["method.lr=-1"]', r"method.lr=-1.0 must be > 0")):
        cfg = compose("bench", overrides=["methods=[dafl,kd]", bad])
        with pytest.raises(ConfigError, match=message):
            bench.check_cell_configs(cfg, bench.cells(cfg))
    cfg = compose("bench", overrides=["methods=[dafl,kd]", '+settings.fast=["method.epochs=1"]'])
    bench.check_cell_configs(cfg, bench.cells(cfg))
    cfg = compose("bench", overrides=["methods=[dafl]", 'overrides=["trainer=gpu"]'])  # runs where its cells run
    bench.check_cell_configs(cfg, bench.cells(cfg))


def test_cell_overrides_carry_equal_budgets_and_the_setting(bench_hydra):
    cfg = compose("bench", overrides=["budget_s=90", "budget_passes=500", 'overrides=["data=mnist"]',
                                      '+settings.small=["data.batch_size=8"]', "cell.setting=small",
                                      "cell.method=dafl", "cell.seed=2"])
    assert bench.train_overrides(cfg, "bench-x") == [
        "method=dafl", "seed=2", "task_name=bench-x", "trainer.max_time=00:00:01:30",
        "+callbacks.teacher_pass_budget={_target_:dfkd_lab.callbacks.budget.TeacherPassBudget,max_passes:500}",
        "data=mnist", "data.batch_size=8"]
    # the override composes into dfkd-train's config and instantiates the callback
    train = compose("train", overrides=bench.train_overrides(cfg, "g")[:5])
    assert isinstance(bench.hydra.utils.instantiate(train.callbacks.teacher_pass_budget), TeacherPassBudget)


def test_bench_composes_under_the_submitit_slurm_launcher(bench_hydra):
    """The same benchmark definition on SLURM: only the launcher changes (no cluster needed)."""
    for launcher, target in (("submitit_slurm", "SlurmLauncher"), ("slurm", "SlurmLauncher"),
                             ("joblib", "JoblibLauncher")):
        cfg = compose("bench", overrides=["methods=[dafl]", "name=b", "cell.method=dafl", "cell.seed=1",
                                          f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)
        assert cfg.hydra.sweeper._target_.endswith("bench_sweeper.BenchSweeper")
        assert cfg.hydra.sweep.dir.endswith("outputs/bench/b") and cfg.hydra.sweep.subdir == "default/dafl/seed1"


def run_bench(tmp_path, *args, timeout=600, env=None):
    done = subprocess.run([sys.executable, "-m", "dfkd_lab.bench", f"hydra.sweep.dir={tmp_path}", *args],
                          check=False, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("launcher", ["hydra/launcher=basic", pytest.param(
    "hydra/launcher=joblib hydra.launcher.n_jobs=2", marks=pytest.mark.slow)])  # ~50 s of imports
def test_bench_skips_finished_cells(tmp_path, launcher):
    """A dry run (each cell writes its dfkd-train command instead of running it): only unfinished
    cells get a command; a finished run is skipped, a stopped one (no final metrics) runs again."""
    budget = ["trainer.max_time=00:00:00:30"]  # the cells were run by this command
    fake_run(tmp_path / "default/dafl/seed0", "dafl", {"test/acc": 0.7, "time/total_s": 3.0}, overrides=budget)
    fake_run(tmp_path / "default/kd/seed1", "kd", {"test/acc": 0.2}, seed=1, overrides=budget)  # stopped: no total time
    (tmp_path / "default/kd/seed1/checkpoints").mkdir()
    (tmp_path / "default/kd/seed1/checkpoints/last.ckpt").write_bytes(b"")  # ... with a checkpoint
    own_code = os.pathsep.join([str(tmp_path / "my code"), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = run_bench(tmp_path, "methods=[dafl,kd]", "seeds=[0,1]", "budget_s=30", "dry_run=true", "group=bench-x",
                    "threads=1", *launcher.split(), env={**os.environ, "PYTHONPATH": own_code})
    assert "4 runs" in out and "1 finished before, 3 to run" in out
    assert not (tmp_path / "default/dafl/seed0/command.txt").exists()
    for cell in ("dafl/seed1", "kd/seed0", "kd/seed1"):
        command = (tmp_path / "default" / cell / "command.txt").read_text()
        assert f"method={cell.split('/')[0]} seed={cell[-1]}" in command and "trainer.max_time=00:00:00:30" in command
        assert command.rstrip().endswith("resume=last") == (cell == "kd/seed1")  # the stopped run continues
        assert command.startswith(f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH={shlex.quote(own_code)} ")
        assert shlex.split(command)[2] == f"PYTHONPATH={own_code}"  # the shell reads it as the variable
    assert (tmp_path / "command.txt").read_text().startswith("dfkd-bench 'methods=[dafl,kd]'")


def test_a_bench_refuses_to_mix_its_cells_with_those_another_command_ran(tmp_path):
    """The same name with another budget, override or thread count: the finished cells would be
    kept beside new ones in one table, so the benchmark stops before running anything."""
    fake_run(tmp_path / "default/dafl/seed0", "dafl", {"test/acc": 0.7, "time/total_s": 3.0},
             overrides=["trainer.max_time=00:00:00:20"])
    fake_run(tmp_path / "default/kd/seed0", "kd", {"test/acc": 0.7, "time/total_s": 3.0, "machine/threads": 99},
             overrides=["trainer.max_time=00:00:00:20"])  # the cells inherit this process's threads
    common = [sys.executable, "-m", "dfkd_lab.bench", f"hydra.sweep.dir={tmp_path}", "methods=[dafl,kd]", "seeds=[0]",
              "group=bench-x", "dry_run=true"]
    for extra, why in ((["budget_s=30"], "default/dafl/seed0: ran trainer.max_time=00:00:00:20, now trainer.max_time=00:00:00:30"),
                       (["budget_s=20", "threads=2"], "ran with 1 threads, now threads=2"),
                       (["budget_s=20", "methods=[kd]"], (f"ran with 99 threads, now {torch.get_num_threads()} "
                                                        "(threads not given: torch's default here)"))):
        done = subprocess.run([*common, *extra], check=False, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2 and " of the runs in " in done.stderr and why in done.stderr, done.stderr
        assert "new name=" in done.stderr and not list(tmp_path.glob("default/*/seed0/command.txt"))
    (tmp_path / "command.txt").write_text("dfkd-bench budget_s=20 threads=1 (the command that ran the cells)\n")
    done = subprocess.run([*common, "budget_s=20", "threads=1", "methods=[dafl]",  # Hydra's own: not in overrides.yaml
                           'overrides=["hydra/job_logging=disabled"]'], check=False, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "1 finished before, 0 to run" in done.stdout, done.stderr
    assert "(the command that ran the cells)" in (tmp_path / "command.txt").read_text()  # a dry run ran none


def test_overrides_that_name_the_cell_are_read_as_its_job_reads_them(tmp_path):
    """The documented CIFAR-10 benchmark: one preset per method through ${cell.method}."""
    out = run_bench(tmp_path, "methods=[kd,dafl]", "seeds=[0]", "dry_run=true",
                    'overrides=["experiment=cifar10_cpu_${cell.method}"]')
    assert "0 finished before, 2 to run" in out
    for method in ("kd", "dafl"):
        command = (tmp_path / "default" / method / "seed0" / "command.txt").read_text()
        assert f"experiment=cifar10_cpu_{method}" in command


def test_each_cell_gets_its_run_dir_even_where_hydra_would_misread_the_path(tmp_path):
    """Cells run in absolute dirs: a sweep dir under a folder such as ``runs (1)`` or ``#2`` reaches
    each dfkd-train quoted, so Hydra reads it back as the cell's dir."""
    sweep_dir = tmp_path / "runs (1)" / "#2"
    done = subprocess.run([sys.executable, "-m", "dfkd_lab.bench", f"hydra.sweep.dir={hydra_quoted(sweep_dir)}",
                           "methods=[kd]", "seeds=[0]", "dry_run=true"],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    command = shlex.split((sweep_dir / "default/kd/seed0/command.txt").read_text())
    (run_dir,) = [a for a in command if a.startswith("hydra.run.dir=")]
    assert OverridesParser.create().parse_override(run_dir).value() == str(sweep_dir / "default/kd/seed0")


TINY = '["trainer.max_epochs=1","trainer.limit_train_batches=2","trainer.limit_val_batches=1",' \
       '"trainer.limit_test_batches=1","trainer.enable_progress_bar=false","logger=none"]'


@pytest.mark.slow
def test_bench_runs_under_joblib_and_a_second_start_skips_everything(tmp_path):
    args = ["methods=[scratch,dafl]", "seeds=[0]", "budget_s=60", "budget_passes=6", "threads=1",
            f"overrides={TINY}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out = run_bench(tmp_path, *args)
    assert "0 finished before, 2 to run" in out and "| dafl |" in out
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert sorted(r["method"] for r in saved["rows"]) == ["dafl", "scratch"]
    dafl = next(r for r in saved["rows"] if r["method"] == "dafl")
    assert dafl["status"] == "1 finished" and 6 <= dafl["teacher_passes_mean"] < 12  # stopped by the budget
    for key in ("acc_mean", "acc_best_mean", "synthesis_s_mean", "kd_s_mean", "images_mean", "peak_mb_mean"):
        assert dafl[key] >= 0, key
    config = yaml.safe_load((tmp_path / "default/dafl/seed0/.hydra/config.yaml").read_text())
    assert config["trainer"]["max_time"] == "00:00:01:00" and config["seed"] == 0
    metrics = json.loads((tmp_path / "default/dafl/seed0/metrics.json").read_text())
    assert metrics["machine/threads"] == 1 and "run/commit" in metrics
    assert (tmp_path / "report.html").is_file()
    assert "2 finished before, 0 to run" in run_bench(tmp_path, *args)



@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_bench_exits_1(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dfkd_lab.bench", f"hydra.sweep.dir={tmp_path}", "methods=[kd]",
                           "seeds=[0]", 'overrides=["resume=/nonexistent/run"]'],  # dfkd-train refuses it up front
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "dfkd-train exit 2" in done.stderr
    assert "no such run dir" in (tmp_path / "default/kd/seed0/bench_job.log").read_text()
    assert "- failed without metrics: " in (tmp_path / "benchmark.md").read_text()


@pytest.fixture
def clears_the_stop_request():
    """A stop requested in this process outlives its ``on_signals`` block (the caller reads it
    after); entering a new block clears it, so later tests in this process run."""
    yield
    with stop.on_signals():
        pass


@pytest.mark.parametrize("handled", [True, False])
def test_a_stop_asks_the_running_cell_to_stop_and_waits_for_it(tmp_path, handled, clears_the_stop_request):
    """A cell is stopped as dfkd-train honours it (SIGTERM: it saves its checkpoint), not killed:
    a stop requested while the bench listens for one (``handled``), and a bare KeyboardInterrupt."""
    saved = tmp_path / "saved"
    child = ("import pathlib, signal, sys, time\n"
             f"def stop(*_): pathlib.Path({str(saved)!r}).write_text('checkpoint'); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
             "time.sleep(60)\n")
    ctrl_c = threading.Thread(target=lambda: (_wait_for(tmp_path / "started"), os.kill(os.getpid(), signal.SIGINT)))
    ctrl_c.start()
    if handled:
        with stop.on_signals():
            assert bench.run_until_stopped([sys.executable, "-c", child]) == 143
    else:  # Python's own Ctrl-C, also where the tests run with SIGINT ignored (a background job)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                bench.run_until_stopped([sys.executable, "-c", child])
        finally:
            signal.signal(signal.SIGINT, previous)
    ctrl_c.join()
    assert saved.read_text() == "checkpoint"


def test_a_stopped_bench_saves_the_running_cell_and_starts_no_other(tmp_path):
    """SIGINT to the bench alone (no terminal forwards it to the cell here): the cell is asked to
    stop and saves its checkpoint, the next cell never starts, the bench exits 130 naming the
    command that continues it."""
    overrides = TINY.replace('"trainer.limit_train_batches=2",', "").replace('"trainer.max_epochs=1",', "")
    long = ('+settings.long=["method.synthesis.steps_per_epoch=400","method.synthesis.batch_size=16",'
            '"callbacks.step_checkpoint.every_n_train_steps=1000"]')
    bench_proc = subprocess.Popen(
        [sys.executable, "-m", "dfkd_lab.bench", f"hydra.sweep.dir={tmp_path}", "methods=[dafl]", "seeds=[0,1]",
         f"overrides={overrides}", long], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "long/dafl/seed0/train.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "training method=dafl" in log.read_text()) and time.monotonic() < deadline:
        assert bench_proc.poll() is None, bench_proc.communicate()
        time.sleep(0.2)
    time.sleep(2)
    bench_proc.send_signal(signal.SIGINT)
    _, err = bench_proc.communicate(timeout=300)
    assert bench_proc.returncode == 130, err[-2000:]
    assert "no further cell starts" in err and "Continue with: dfkd-bench" in err
    cell = tmp_path / "long/dafl/seed0"
    assert json.loads((cell / "metrics.json").read_text())["status"] == "stopped"
    assert (cell / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "long/dafl/seed1/bench_job.log").exists()  # never started


def test_a_typo_in_the_overrides_stops_the_bench_before_any_cell(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dfkd_lab.bench", f"hydra.sweep.dir={tmp_path}", "methods=[kd]",
                           "seeds=[0]", 'overrides=["data.batchsize=8"]'], check=False, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2 and "method=kd does not compose with the overrides" in done.stderr
    assert "data.batchsize" in done.stderr and not (tmp_path / "default").exists()


def _wait_for(path: Path, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_curve_cut_short_in_its_last_line_is_read_and_resumed(tmp_path):
    from types import SimpleNamespace

    from dfkd_lab.callbacks.metrics import MetricsWriter

    curve = tmp_path / "curve.jsonl"
    curve.write_text('{"step": 5, "val/acc": 0.1}\n{"step": 10, "val/acc": 0.2}\n{"step": 15, "val/acc": 0.3}\n{"step": 2')
    assert [r["step"] for r in report.read_curve(curve)] == [5, 10, 15]
    MetricsWriter(str(tmp_path / "metrics.json")).on_train_start(
        SimpleNamespace(is_global_zero=True, ckpt_path="last.ckpt", global_step=10), None)
    assert curve.read_text() == '{"step": 5, "val/acc": 0.1}\n{"step": 10, "val/acc": 0.2}\n'
    curve.write_text('{"step": 5}\n{"step": \n{"step": 15}\n')
    with pytest.raises(ValueError, match="curve.jsonl, line 2, is not valid JSON"):
        report.read_curve(curve)


def test_a_seed_run_twice_counts_once_the_latest(tmp_path):
    first = fake_run(tmp_path / "a", "dafl", {"test/acc": 0.1, "status": "finished"}, seed=0)
    fake_run(tmp_path / "b", "dafl", {"test/acc": 0.5, "status": "finished"}, seed=1)
    fake_run(tmp_path / "c", "dafl", {"test/acc": 0.3, "status": "finished"}, seed=0)
    os.utime(first / "metrics.json", (1, 1))  # "a" ended long before "c"
    (group,) = report.group_runs([report.load_run(tmp_path / d) for d in "abc"])
    row = report.aggregate(group, "")
    assert (row["seeds"], row["n"]) == ("0,1", 2) and row["acc_mean"] == pytest.approx(40.0)
    assert row["status"] == "3 finished (1 earlier of a repeated seed left out)"

