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


def test_readme_stays_a_short_product_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 165, f"README.md has {len(lines)} lines: move detail to docs/"
