"""Every method family runs end to end for a few steps and writes its metrics."""

import json
from pathlib import Path

import pytest

from dfkd_lab.train import run


@pytest.mark.parametrize("method", ["kd", "scratch", "dafl"])
def test_method_runs_and_writes_metrics(compose_cfg, method):
    cfg = compose_cfg(f"method={method}")
    metrics = run(cfg)
    on_disk = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert 0.0 <= on_disk["test/acc"] <= 1.0
    assert on_disk["time/total_s"] > 0
    assert metrics["test/acc"] == on_disk["test/acc"]
