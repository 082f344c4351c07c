"""The launch scripts as a cluster runs them, with stand-ins for ``nvidia-smi``, ``srun`` and ``torchrun`` on PATH
that print what they were given."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """``nvidia-smi --list-gpus`` lists 8 GPUs; ``srun`` and ``torchrun`` print their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "nvidia-smi": 'for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done',
        "srun": 'echo "srun $*"',
        "torchrun": 'echo "torchrun $*"',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run(script: str, fake_bin: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("SLURM_")}
    base["PATH"] = f"{fake_bin}:{base['PATH']}"
    return subprocess.run(
        ["bash", script, "recipe.yaml"], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("visible", "expected"), [(None, 8), ("0,2", 2), ("GPU-1", 1), ("3", 1)], ids=["all", "two", "uuid", "one"]
)
def test_torchrun_starts_one_process_per_visible_gpu(fake_bin, visible, expected) -> None:
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    proc = run("experiments/launch/torchrun.sh", fake_bin, **env)
    assert proc.returncode == 0, proc.stderr
    assert f"--nproc-per-node {expected} " in proc.stdout and f"--trainer.devices {expected}" in proc.stdout


def test_torchrun_refuses_when_no_gpu_is_visible(fake_bin) -> None:
    proc = run("experiments/launch/torchrun.sh", fake_bin, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 1 and "no GPU visible" in proc.stderr and "torchrun" not in proc.stdout


def test_slurm_passes_cpus_per_task_to_srun_and_kills_on_a_failed_task(fake_bin) -> None:
    env = {"SLURM_CPUS_PER_TASK": "8", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4"}
    proc = run("experiments/launch/slurm.sh", fake_bin, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("srun --cpus-per-task=8 --kill-on-bad-exit=1 python -m deeplab_lit fit ")
    assert "--trainer.num_nodes 2 --trainer.devices 4" in proc.stdout
