"""The README is a product page whose results table is the committed benchmark report's headline."""

import json
from pathlib import Path

from dfkd_lab import report

REPO = Path(__file__).resolve().parents[1]


def committed_report(stem: str, columns=None, rerun="dfkd-report --readme README.md") -> dict:
    """The committed ``docs/results/<stem>/<stem>.json``, after checking that the README's
    ``<stem>`` block is its headline (with ``columns``, the ``--readme-columns`` it was written with)."""
    readme = (REPO / "README.md").read_text()
    saved = json.loads((REPO / "docs" / "results" / stem / f"{stem}.json").read_text())
    picked = report.headline_columns(columns, saved["header"]) if columns else None
    written = report.headline(saved["rows"], saved["header"], f"docs/results/{stem}/{stem}.md", picked)
    assert report.replace_block(readme, stem, written) == readme, \
        f"README's {stem} table differs from docs/results/{stem}/{stem}.json: rerun {rerun}"
    return saved


def test_readme_results_table_is_the_committed_reports_headline():
    saved = committed_report("fashion_mnist")
    # one benchmark invocation, every run finished, seeds 0-2 of every row
    assert len(saved["header"]["command"]) == 1 and saved["header"]["finished"] == saved["header"]["runs"]
    assert {row["seeds"] for row in saved["rows"]} == {"0,1,2"}
    assert {"kd", "scratch", "fastdfkd_2", "nayer", "cmi"} <= {row["method"] for row in saved["rows"]}


CIFAR10_CPU_COLUMNS = ["method", "transfer", "acc", "acc_best", "share", "synthesis_s", "kd_s", "images", "images_per_s", "peak_mb", "total_s"]
CIFAR10_CPU2H_COLUMNS = ["method", "transfer", "acc", "acc_best", "acc_q2", "synthesis_s", "kd_s", "images", "images_per_s", "peak_mb", "total_s"]
CIFAR10_RERUN = "the dfkd-report command of docs/cifar10_cpu.md"


def test_readme_cifar10_table_is_the_committed_cpu_benchmarks_headline():
    saved = committed_report("cifar10_cpu", CIFAR10_CPU_COLUMNS, CIFAR10_RERUN)
    # one benchmark invocation, every run finished, every data-free method and both reference rows
    assert len(saved["header"]["command"]) == 1 and saved["header"]["finished"] == saved["header"]["runs"] == 16
    assert saved["header"]["relative_to"] == "kd"
    assert {row["method"] for row in saved["rows"]} == {
        "kd", "scratch", "dafl", "zskt", "dfad", "dfq", "deepinversion", "adi", "zskd", "wang2021", "lopes", "cmi",
        "fastdfkd_2", "fastdfkd_5", "fastdfkd_10", "nayer"}


def test_readme_two_hour_row_is_the_committed_long_runs_headline():
    saved = committed_report("cifar10_cpu2h", CIFAR10_CPU2H_COLUMNS, CIFAR10_RERUN)
    assert len(saved["header"]["command"]) == 1 and saved["header"]["finished"] == saved["header"]["runs"] == 1
    assert [row["method"] for row in saved["rows"]] == ["fastdfkd_10"]
    assert "experiment=cifar10_cpu2h_fastdfkd_10" in saved["header"]["command"][0]


def test_readme_stays_a_short_product_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 210, f"README.md has {len(lines)} lines: move detail to docs/"
