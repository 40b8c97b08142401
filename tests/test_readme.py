"""The README is a product page whose results table is the committed benchmark report's headline."""

import json
from pathlib import Path

from dfkd_lab import report

REPO = Path(__file__).resolve().parents[1]


def test_readme_results_table_is_the_committed_reports_headline():
    readme = (REPO / "README.md").read_text()
    saved = json.loads((REPO / "docs" / "results" / "fashion_mnist" / "fashion_mnist.json").read_text())
    written = report.headline(saved["rows"], saved["header"], "docs/results/fashion_mnist/fashion_mnist.md")
    assert report.replace_block(readme, "fashion_mnist", written) == readme, \
        "README's table differs from docs/results/fashion_mnist/fashion_mnist.json: rerun dfkd-report --readme README.md"
    # one benchmark invocation, every run finished, seeds 0-2 of every row
    assert len(saved["header"]["command"]) == 1 and saved["header"]["finished"] == saved["header"]["runs"]
    assert {row["seeds"] for row in saved["rows"]} == {"0,1,2"}
    assert {"kd", "scratch", "fastdfkd_2", "nayer", "cmi"} <= {row["method"] for row in saved["rows"]}


CIFAR10_CPU_COLUMNS = ["method", "transfer", "acc", "acc_best", "share", "synthesis_s", "kd_s", "images", "images_per_s", "peak_mb", "total_s"]


def test_readme_cifar10_table_is_the_committed_cpu_benchmarks_headline():
    readme = (REPO / "README.md").read_text()
    saved = json.loads((REPO / "docs" / "results" / "cifar10_cpu" / "cifar10_cpu.json").read_text())
    columns = report.headline_columns(CIFAR10_CPU_COLUMNS, saved["header"])
    written = report.headline(saved["rows"], saved["header"], "docs/results/cifar10_cpu/cifar10_cpu.md", columns)
    assert report.replace_block(readme, "cifar10_cpu", written) == readme, \
        "README's CIFAR-10 table differs from docs/results/cifar10_cpu/cifar10_cpu.json: rerun the dfkd-report " \
        "command of docs/cifar10_cpu.md"
    # one benchmark invocation, every run finished, every data-free method and both reference rows
    assert len(saved["header"]["command"]) == 1 and saved["header"]["finished"] == saved["header"]["runs"] == 16
    assert saved["header"]["relative_to"] == "kd"
    assert {row["method"] for row in saved["rows"]} == {
        "kd", "scratch", "dafl", "zskt", "dfad", "dfq", "deepinversion", "adi", "zskd", "wang2021", "lopes", "cmi",
        "fastdfkd_2", "fastdfkd_5", "fastdfkd_10", "nayer"}



CIFAR10_CPU2H_COLUMNS = ["method", "transfer", "acc", "acc_best", "acc_q2", "synthesis_s", "kd_s", "images", "images_per_s", "peak_mb", "total_s"]


def test_readme_two_hour_row_is_the_committed_long_runs_headline():
    readme = (REPO / "README.md").read_text()
    saved = json.loads((REPO / "docs" / "results" / "cifar10_cpu2h" / "cifar10_cpu2h.json").read_text())
    columns = report.headline_columns(CIFAR10_CPU2H_COLUMNS, saved["header"])
    written = report.headline(saved["rows"], saved["header"], "docs/results/cifar10_cpu2h/cifar10_cpu2h.md", columns)
    assert report.replace_block(readme, "cifar10_cpu2h", written) == readme, \
        "README's 2-hour CIFAR-10 row differs from docs/results/cifar10_cpu2h/cifar10_cpu2h.json: rerun the " \
        "dfkd-report command of docs/cifar10_cpu.md"
    assert len(saved["header"]["command"]) == 1 and saved["header"]["finished"] == saved["header"]["runs"] == 1
    assert [row["method"] for row in saved["rows"]] == ["fastdfkd_10"]
    assert "experiment=cifar10_cpu2h_fastdfkd_10" in saved["header"]["command"][0]


def test_readme_stays_a_short_product_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 210, f"README.md has {len(lines)} lines: move detail to docs/"
