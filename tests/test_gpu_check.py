"""benchmarks/gpu_check.py: skips cleanly without a GPU; its CPU dry mode runs every check at toy size."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, even on a GPU machine
    return subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_skips_cleanly_without_a_cuda_device(tmp_path) -> None:
    proc = gpu_check("--out", str(tmp_path), timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "skipped: no CUDA device", proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # 9-15 minutes on 2 busy cores: 11 CLI runs, 2 processes in 5 of them
def test_cpu_dry_mode_runs_every_check(tmp_path) -> None:
    proc = gpu_check("--device", "cpu", "--out", str(tmp_path), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| ok |") == 8 and "FAIL" not in table
    assert "| predict: 1 image, 2 process(es) | ok |" in table and "equal confusion matrices" in table
