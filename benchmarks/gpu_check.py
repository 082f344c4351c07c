"""The GPU path in a few minutes on 1-8 GPUs: every run is the real CLI (``python -m deeplab_lit ...``) on Shapes.

    python benchmarks/gpu_check.py                   # all visible GPUs; prints a table, exit status 1 if a check fails
    python benchmarks/gpu_check.py --gpus 2 --out runs/gpu_check
    python benchmarks/gpu_check.py --device cpu      # the same steps at toy size on 2 CPU processes (gloo)

Checks: a short DDP fit (NCCL, SyncBN, bf16, W&B offline); validate/test/predict with fewer images than processes
(refused at once, not hung); test on 1 vs N GPUs (equal confusion matrices); deterministic "warn" trains and "true"
is refused; predict with multi-scale + flip + sliding window on a 1024x2048 image (seconds, peak memory); and
``benchmarks/bench_train.py`` (training images/s, peak memory). Without a CUDA device it prints
"skipped: no CUDA device" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHAPES = "experiments/configs/shapes/deeplabv3_resnet18-os16_b16-4e_64.yaml"
CITYSCAPES = "experiments/configs/cityscapes/deeplabv3_r101-os16_b8-90k_769.yaml"
REPORT = "GPU_CHECK"  # prefix of the lines benchmarks/gpu_report.py prints for this script to read
SIZES = {  # per device: Shapes side, training images per process, batch; the TTA image; bench_train arguments
    "cuda": {"side": 128, "train": 64, "batch": 8, "epochs": 2, "image": (1024, 2048), "window": 769,
             "scales": "[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]", "bench": ["--warmup", "2", "--iters", "5"], "timeout": 300},
    "cpu": {"side": 32, "train": 4, "batch": 2, "epochs": 1, "image": (64, 128), "window": 49, "scales": "[0.5, 1.0]",
            "bench": ["--backbone", "resnet18", "--batch", "2", "--size", "65", "--warmup", "1", "--iters", "1"],
            "timeout": 240},
}  # fmt: skip


@dataclass
class Run:
    returncode: int | None  # None: killed at the timeout
    output: str
    seconds: float

    def report(self) -> dict[str, float]:
        line = next((ln for ln in self.output.splitlines() if ln.startswith(REPORT)), f"{REPORT}")
        return {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}


def run(args: list[str], log: Path, timeout: float, script: str | None = None) -> Run:
    """``python -m deeplab_lit ARGS`` (or a script), in its own process group so a hang is ended with every rank."""
    command = [sys.executable, script] if script else [sys.executable, "-m", "deeplab_lit"]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(log.parent), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*command, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, code = proc.communicate(timeout=timeout)[0], proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, code = proc.communicate()[0], None
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output)
    return Run(code, output, time.perf_counter() - start)


class Checks:
    """Runs each check, keeps a row per check: (name, ok, seconds, what was seen)."""

    def __init__(self, device: str, gpus: int, out: Path) -> None:
        self.device, self.gpus, self.out, self.size = device, gpus, out, SIZES[device]
        self.rows: list[tuple[str, bool, float, str]] = []
        accelerator = "gpu" if device == "cuda" else "cpu"
        self.trainer = ["--trainer.accelerator", accelerator, "--trainer.enable_progress_bar", "false"]
        s = self.size
        self.data = [
            "--data.init_args.image_size", str(s["side"]), "--data.init_args.batch_size", str(s["batch"]),
            "--data.init_args.num_train", str(s["train"] * gpus), "--data.init_args.num_workers", "2",
            "--data.init_args.val_batch_size", "1",
        ]  # fmt: skip

    def add(self, name: str, ok: bool, seconds: float, detail: str) -> None:
        self.rows.append((name, ok, seconds, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail} ({seconds:.0f} s)", flush=True)

    def cli(self, name: str, args: list[str], devices: int, timeout: float | None = None) -> Run:
        devices_args = ["--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto"]
        return run([*args, *self.trainer, *devices_args], self.out / f"{name}.log", timeout or self.size["timeout"])

    def fit(self) -> Path:
        root = self.out / "fit"
        args = [
            "fit", "--config", SHAPES, "--config", "experiments/configs/_base/logger_wandb.yaml", *self.data,
            "--data.init_args.num_val", str(2 * self.gpus + 1), "--trainer.max_epochs", str(self.size["epochs"]),
            "--trainer.precision", "bf16-mixed", "--trainer.benchmark", "true", "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root), "--checkpoint.dirpath", str(root / "checkpoints"),
            "--trainer.callbacks+=benchmarks.gpu_report.Report",
        ]  # fmt: skip
        result = self.cli("fit", args, self.gpus)
        report, ckpt = result.report(), root / "checkpoints" / "last.ckpt"
        wandb_runs = list(root.rglob("offline-run-*"))
        metrics = root / "val_metrics.json"
        ok = result.returncode == 0 and ckpt.is_file() and bool(wandb_runs) and metrics.is_file()
        expect_sync_bn = self.device == "cuda" and self.gpus > 1
        ok = ok and (report.get("sync_bn", 0) > 0) == expect_sync_bn
        miou = json.loads(metrics.read_text())["mIoU"] if metrics.is_file() else float("nan")
        detail = (
            f"{self.gpus} process(es), bf16, W&B offline runs: {len(wandb_runs)}, SyncBN layers: "
            f"{report.get('sync_bn', 0):.0f}, val mIoU {miou:.3f}, peak {report.get('peak_GiB', 0):.2f} GiB"
        )
        self.add("DDP fit", ok, result.seconds, detail)
        return ckpt

    def few_images(self, ckpt: Path) -> None:
        image_dir = self.out / "one_image"
        image_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((self.size["side"], self.size["side"], 3), 127, np.uint8)).save(image_dir / "a.png")
        for stage in ("validate", "test", "predict"):
            args = [
                stage, "--config", SHAPES, *self.data, "--data.init_args.num_val", "1", "--data.init_args.num_test",
                "1", "--data.init_args.predict_path", str(image_dir), "--ckpt_path", str(ckpt),
                "--trainer.logger", "false", "--trainer.default_root_dir", str(self.out / f"few_{stage}"),
            ]  # fmt: skip
            result = self.cli(f"few_{stage}", args, self.gpus, timeout=180)
            refused = f"for {self.gpus} processes" in result.output
            ok = (result.returncode == 1 and refused) if self.gpus > 1 else result.returncode == 0
            seen = (
                "hung, killed" if result.returncode is None else ("refused" if refused else f"exit {result.returncode}")
            )
            self.add(f"{stage}: 1 image, {self.gpus} process(es)", ok, result.seconds, seen)

    def exact_evaluation(self, ckpt: Path) -> None:
        if self.gpus < 2:
            return self.add("test: 1 vs N processes", True, 0.0, "n/a with 1 GPU")
        confmats, seconds = {}, 0.0
        for devices in (1, self.gpus):
            root = self.out / f"test_{devices}"
            args = [
                "test", "--config", SHAPES, *self.data, "--data.init_args.num_test", str(2 * self.gpus + 1),
                "--ckpt_path", str(ckpt), "--trainer.logger", "false", "--trainer.default_root_dir", str(root),
            ]  # fmt: skip
            result = self.cli(f"test_{devices}", args, devices)
            seconds += result.seconds
            path = root / "test_metrics.json"
            confmats[devices] = json.loads(path.read_text())["confmat"] if path.is_file() else None
        ok = confmats[1] is not None and confmats[1] == confmats[self.gpus]
        self.add("test: 1 vs N processes", ok, seconds, "equal confusion matrices" if ok else f"differ: {confmats}")

    def determinism(self) -> None:
        args = ["fit", "--config", SHAPES, *self.data, "--data.init_args.num_val", "1", "--trainer.max_steps", "2"]
        args += ["--trainer.logger", "false", "--trainer.default_root_dir", str(self.out / "deterministic")]
        warn = self.cli("deterministic_warn", [*args, "--trainer.deterministic", "warn"], 1)
        strict = self.cli("deterministic_true", [*args, "--trainer.deterministic", "true"], 1)
        refused = "cannot run on CUDA" in strict.output
        ok = warn.returncode == 0 and (refused if self.device == "cuda" else strict.returncode == 0)
        detail = f"warn: exit {warn.returncode}; true: {'refused' if refused else f'exit {strict.returncode}'}"
        self.add("deterministic warn / true", ok, warn.seconds + strict.seconds, detail)

    def test_time_pipeline(self) -> None:
        h, w = self.size["image"]
        image_dir, out_dir = self.out / "large_image", self.out / "tta"
        image_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_dir / "large.png")
        args = [
            "predict", "--config", CITYSCAPES, "--model.init_args.backbone_weights", "null",
            "--model.init_args.eval_scales", self.size["scales"], "--model.init_args.eval_flip", "true",
            "--model.init_args.sliding_window", str(self.size["window"]), "--data.init_args.predict_path",
            str(image_dir), "--prediction.output_dir", str(out_dir), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(out_dir), "--trainer.callbacks+=benchmarks.gpu_report.Report",
        ]  # fmt: skip
        if self.device == "cpu":  # toy size: a ResNet-18 in the recipe's place
            args += ["--model.init_args.backbone", "resnet18", "--model.init_args.multi_grid", "[1, 2]"]
        result = self.cli("tta", args, 1)
        png = out_dir / "large.png"
        ok = result.returncode == 0 and png.is_file() and Image.open(png).size == (w, h)
        report = result.report()
        detail = (
            f"{h}x{w}, scales {self.size['scales']} + flip, window {self.size['window']}, OS 8: "
            f"{report.get('seconds', 0):.1f} s, peak {report.get('peak_GiB', 0):.2f} GiB"
        )
        self.add("MS + flip + sliding window", ok, result.seconds, detail)

    def bench_train(self) -> None:
        path = self.out / "bench_train.json"
        args = ["--device", self.device, *self.size["bench"], "--json", str(path)]
        result = run(args, self.out / "bench_train.log", 600, script="benchmarks/bench_train.py")
        ok = result.returncode == 0 and path.is_file()
        detail = f"exit {result.returncode}"
        if ok:
            record = json.loads(path.read_text())
            peaks = record.get("peak_memory_gib", {})
            detail = ", ".join(
                f"{name}: {ips:.1f} img/s" + (f" ({peaks[name]:.2f} GiB)" if name in peaks else "")
                for name, ips in record["images_per_s"].items()
            )
            detail += f" ({record['meta']['network']}, batch {record['meta']['batch']}, {record['meta']['size']} px)"
        self.add("bench_train", ok, result.seconds, detail)

    def table(self) -> str:
        lines = ["| check | result | seconds | seen |", "|---|---|---:|---|"]
        lines += [f"| {n} | {'ok' if ok else 'FAIL'} | {s:.0f} | {d} |" for n, ok, s, d in self.rows]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: toy sizes, to check the script")
    parser.add_argument("--gpus", type=int, help="processes (default: every visible GPU; 2 with --device cpu)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    available = torch.cuda.device_count() if args.device == "cuda" else 2
    gpus = args.gpus or available
    if args.device == "cuda" and gpus > available:
        parser.error(f"--gpus {gpus}: only {available} visible")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (gloo)"
    print(f"{gpus} x {name}, torch {torch.__version__}; logs in {args.out}/", flush=True)
    checks = Checks(args.device, gpus, args.out.resolve())
    ckpt = checks.fit()
    checks.few_images(ckpt)
    checks.exact_evaluation(ckpt)
    checks.determinism()
    checks.test_time_pipeline()
    checks.bench_train()
    table = checks.table()
    print(f"\n{gpus} x {name}, torch {torch.__version__}\n{table}")
    (args.out / "gpu_check.md").write_text(table + "\n")
    return 0 if all(ok for _, ok, _, _ in checks.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
