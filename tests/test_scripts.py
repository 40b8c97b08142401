"""The benchmark scripts in scripts/ run end to end at toy sizes and print what they promise."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_synthesis_speed_compares_both_methods_under_the_given_setting():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "synthesis_speed.py"), "--batch-size", "4", "--batches", "1",
         "--di-iterations", "3", "--overrides", "method.lr=0.01"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "teacher lenet5_bn_fc_fmnist method.lr=0.01; synthesis only" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("fastdfkd_2", "deepinversion-3"))}
    assert set(rows) == {"fastdfkd_2", "deepinversion-3"} and all(row[1] == "4" for row in rows.values())
    assert "speed-up fastdfkd_2 / deepinversion-3:" in out.stdout
