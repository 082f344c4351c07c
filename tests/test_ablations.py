"""experiments/ablations: the run grids (dry run, SLURM array, W&B sweeps) of every script, the CLI accepting their
overrides, and one tiny real ablation with its Markdown table and plot."""

import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from deeplab_lit.cli import main as cli_main

ABLATIONS = Path(__file__).resolve().parents[1] / "experiments" / "ablations"
# script -> (variants, training runs) per seed; evaluation-only knobs (eval OS, CRF) share one training run
GRIDS = {"atrous_rates": (5, 5), "image_pooling": (4, 4), "output_stride": (6, 3), "crf": (4, 2), "decoder": (2, 2)}


def load(name: str):
    if str(ABLATIONS) not in sys.path:
        sys.path.insert(0, str(ABLATIONS))  # the scripts import their neighbours (`grid`, `launch`, ...)
    spec = importlib.util.spec_from_file_location(f"ablation_{name}", ABLATIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def option(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # the last occurrence wins, as in jsonargparse


def dry_run(name: str, capsys, *args: str) -> list[list[str]]:
    load(name).main(["--dry-run", *args])
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("python -m deeplab_lit ") for line in lines)
    return [shlex.split(line)[3:] for line in lines]


@pytest.mark.parametrize("name", GRIDS)
def test_dry_run_trains_once_and_tests_each_variant_with_group_and_tags(name, capsys) -> None:
    module, (variants, fits) = load(name), GRIDS[name]
    commands = dry_run(name, capsys, "--wandb")
    assert len(commands) == (variants + fits) * 3  # 3 seeds; variants × seeds × 2 where no training run is shared
    stages = [argv[0] for argv in commands]
    assert stages.count("fit") == fits * 3 and stages.count("test") == variants * 3
    written = set()
    knobs = {v.value: v.knob for v in module.ABLATION.variants}
    for argv in commands:
        assert option(argv, "--trainer.logger.init_args.group") == f"{name}-shapes"
        assert option(argv, "--trainer.logger.init_args.job_type") == {"fit": "train", "test": "eval"}[argv[0]]
        assert "experiments/configs/_base/logger_wandb.yaml" in argv
        knob, value = json.loads(option(argv, "--trainer.logger.init_args.tags"))
        assert knob == module.ABLATION.variants[0].knob
        if argv[0] == "fit":
            written.add(f"{option(argv, '--checkpoint.dirpath')}/{option(argv, '--checkpoint.filename')}.ckpt")
        else:
            assert knobs[value] == knob
            assert option(argv, "--model.init_args.init_from") in written  # a checkpoint trained before
    tests = [(json.loads(option(a, "--trainer.logger.init_args.tags"))[1], a) for a in commands if a[0] == "test"]
    assert sorted({value for value, _ in tests}) == sorted(knobs)
    assert {option(a, "--seed_everything") for a in commands} == {"0", "1", "2"}


def test_without_wandb_the_commands_keep_the_config_logger(capsys) -> None:
    commands = dry_run("decoder", capsys, "--seeds", "1", "--dataset", "voc", "--max-steps", "100")
    assert len(commands) == 4
    for argv in commands:
        assert not any("logger_wandb" in a or a.endswith((".group", ".tags")) for a in argv)
        assert option(argv, "--config").startswith("experiments/configs/voc/deeplabv3plus_")
        assert option(argv, "--trainer.max_steps") == "100"


def parsed(argv: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_cli_accepts_the_overrides_and_evaluation_knobs_win(capsys) -> None:
    crf_on = next(a for a in dry_run("crf", capsys, "--seeds", "1", "--wandb") if "v1-crf-on-s0-test" in a)
    config = parsed(crf_on, capsys)
    assert config["model"]["init_args"]["crf"]["w1"] == 4.0 and config["model"]["init_args"]["crf"]["iterations"] == 10
    assert config["trainer"]["logger"]["init_args"]["tags"] == ["crf", "on"]
    eval16 = next(a for a in dry_run("output_stride", capsys, "--seeds", "1") if "train8-eval16-s0-test" in a)
    model = parsed(eval16, capsys)["model"]["init_args"]
    fit8 = next(a for a in dry_run("output_stride", capsys, "--seeds", "1") if a[0] == "fit")
    assert (model["output_stride"], model["eval_output_stride"]) == (8, 16)
    assert model["init_from"] == option(fit8, "--checkpoint.dirpath") + "/best.ckpt"
    assert (
        model["init_from"].startswith("runs/ablations/fits/deeplabv3_") and "+output_stride=8-s0-" in model["init_from"]
    )


def test_a_training_run_is_shared_by_every_ablation_that_needs_it(capsys) -> None:
    def trained(name: str, *args: str) -> dict[str, str]:  # variant -> the checkpoint its test loads
        tests = [a for a in dry_run(name, capsys, "--seeds", "1", *args) if a[0] == "test"]
        names = [option(a, "--trainer.logger.init_args.name").removesuffix("-s0-test") for a in tests]
        return dict(zip(names, [option(a, "--model.init_args.init_from") for a in tests], strict=True))

    base_v3 = {trained("image_pooling")["v3-pool"], trained("atrous_rates")["v3-6-12-18"]}
    base_v3 |= {trained("output_stride")["train16-eval8"], trained("output_stride")["train16-eval16"]}
    assert len(base_v3) == 1  # overrides equal to the base config's own values do not make another run
    assert trained("image_pooling")["v3-nopool"] not in base_v3
    assert trained("crf")["v2-crf-off"] == trained("atrous_rates")["v2-aspp-l"] == trained("crf")["v2-crf-on"]
    assert trained("decoder")["v3plus-decoder"] == trained("image_pooling")["v3plus-pool"]
    assert trained("decoder", "--max-epochs", "2")["v3plus-decoder"] != trained("decoder")["v3plus-decoder"]


def test_slurm_array_has_one_task_per_training_run(capsys) -> None:
    script = load("output_stride").main(["--slurm", "--seeds", "2", "--max-epochs", "3"])
    assert "#SBATCH --array=0-5\n" in script  # 3 training runs × 2 seeds
    assert script.startswith("#!/bin/bash\n") and capsys.readouterr().out == script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert srun.endswith("--index $SLURM_ARRAY_TASK_ID") and "--seeds 2 --max-epochs 3" in srun


def test_slurm_array_task_passes_cpus_per_task_to_srun(tmp_path, capsys) -> None:
    """The generated script as SLURM runs it, with an ``srun`` on PATH that prints its arguments."""
    script = tmp_path / "array.sh"
    script.write_text(load("output_stride").main(["--slurm", "--out", str(tmp_path / "runs")]))
    (tmp_path / "srun").write_text('#!/bin/bash\necho "srun $*"\n')
    (tmp_path / "srun").chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_CPUS_PER_TASK": "8", "SLURM_ARRAY_TASK_ID": "3"}
    env["SLURM_SUBMIT_DIR"] = str(tmp_path)
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("srun --cpus-per-task=8 --kill-on-bad-exit=1 python experiments/ablations/")
    assert proc.stdout.rstrip().endswith("--index 3")


def test_sweep_yaml_is_a_grid_over_the_knobs_and_seeds(tmp_path, capsys) -> None:
    (path,) = load("output_stride").main(["--sweep", "--out", str(tmp_path)])
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] == "grid" and sweep["metric"] == {"name": "val/mIoU", "goal": "maximize"}
    assert sweep["parameters"] == {
        "model.init_args.output_stride": {"values": ["8", "16", "32"]},
        "model.init_args.eval_output_stride": {"values": ["8", "16"]},
        "seed_everything": {"values": [0, 1, 2]},
    }
    command = sweep["command"]
    assert command[:5] == ["${env}", "python", "-m", "deeplab_lit", "fit"] and command[-1] == "${args}"
    assert "experiments/configs/_base/logger_wandb.yaml" in command
    paths = load("image_pooling").main(["--sweep", "--out", str(tmp_path)])
    assert [p.name for p in paths] == ["sweep-v3-shapes.yaml", "sweep-v3plus-shapes.yaml"]
    assert "wandb sweep" in capsys.readouterr().out


def test_valid_atrous_taps_match_the_computed_table_of_papers_3j() -> None:
    atrous = load("atrous_rates")
    assert atrous.tap_shares(65, 6)[1] == pytest.approx(0.665, abs=5e-4)  # 513 crop at OS 8
    assert atrous.tap_shares(33, 6)[1] == pytest.approx(0.405, abs=5e-4)
    assert atrous.tap_shares(41, 12)[1] == pytest.approx(0.172, abs=5e-4)  # V2: 321 crop at OS 8
    assert atrous.tap_shares(33, 24)[1] == 0.0  # rate 24 at OS 16: never all 9 taps
    assert atrous.tap_shares(3, 1)[0] == pytest.approx((7 / 9) ** 2)  # per axis 2, 3, 2 of 3 taps inside
    cli = SimpleNamespace(
        model=SimpleNamespace(
            train_output_stride=16, net=SimpleNamespace(aspp=SimpleNamespace(base_rates=(6, 12, 18), rates_stride=16))
        ),
        datamodule=SimpleNamespace(crop_size=513),
    )
    info = atrous.rate_info(cli)
    assert info["feature map (px)"] == 33
    assert info["all 9 valid"] == pytest.approx((0.405 + 0.074 + 0) / 3, abs=1e-3)
    assert info["valid taps @96px"] == pytest.approx(atrous.tap_shares(33, 6)[0])  # rate 6 at OS 16 reaches 96 px
    assert info["valid taps"] == pytest.approx(sum(info[f"valid taps @{d}px"] for d in (96, 192, 288)) / 3)


SPLITS = ["", "d48", "d96", "d144", "d192", "global"]


@pytest.mark.parametrize("name", [*[n for n in GRIDS if n not in ("crf", "decoder")], "context_sanity"])
def test_context_grid_tests_every_variant_per_cue_distance_and_on_the_global_cue(name, capsys) -> None:
    commands = dry_run(name, capsys, "--dataset", "context", "--seeds", "1")
    fits = [a for a in commands if a[0] == "fit"]
    tests = [a for a in commands if a[0] == "test"]
    assert all(option(a, "--config").startswith("experiments/configs/context/deeplabv") for a in commands)
    variants = [v.name for v in load(name).ABLATION.variants]
    assert len(tests) == len(variants) * len(SPLITS) and len(fits) <= len(variants)
    for variant in variants:
        runs = [a for a in tests if option(a, "--trainer.logger.init_args.name").startswith(f"{variant}-s0")]
        assert [option(a, "--trainer.default_root_dir").split("/")[-1] for a in runs] == [
            f"{variant}-s0" + (f"-{split}" if split else "") for split in SPLITS
        ]
        assert len({option(a, "--model.init_args.init_from") for a in runs}) == 1  # one model, six test splits
        assert "--data.init_args.cue_kinds" not in runs[0]  # the config's own, mixed test split
        for distance, argv in zip((48, 96, 144, 192), runs[1:5], strict=True):
            assert option(argv, "--data.init_args.cue_kinds") == "[local]"
            assert option(argv, "--data.init_args.cue_distances") == f"[{distance}]"
        assert option(runs[5], "--data.init_args.cue_kinds") == "[global]"
    config = parsed(tests[1], capsys)
    assert config["data"]["init_args"]["cue_distances"] == [48]
    assert config["model"]["init_args"]["backbone"] == "small_cnn"


def test_context_sanity_baselines_are_a_head_without_reach_and_asppl_shared_with_atrous_rates(capsys) -> None:
    commands = dry_run("context_sanity", capsys, "--seeds", "1")  # --dataset context is the script's default
    one_by_one = parsed(next(a for a in commands if a[0] == "fit" and "deeplabv3_" in option(a, "--config")), capsys)
    assert one_by_one["model"]["init_args"]["atrous_rates"] == []
    assert one_by_one["model"]["init_args"]["image_pooling"] is False
    asppl = {option(a, "--model.init_args.init_from") for a in commands if "v2-aspp-l" in " ".join(a)}
    atrous = dry_run("atrous_rates", capsys, "--dataset", "context", "--seeds", "1")
    assert asppl == {option(a, "--model.init_args.init_from") for a in atrous if "v2-aspp-l" in " ".join(a)}


def test_summary_writes_a_table_per_test_split_next_to_the_overall_one(tmp_path) -> None:
    folder = tmp_path / "context_sanity"
    folder.mkdir()
    rows = []
    for seed, (background, a, b) in enumerate([(0.98, 0.9, 0.8), (0.96, 0.7, 0.6)]):
        for split in SPLITS:
            iou = {"background": background, "A": a, "B": b, "C": None}
            rows.append({"ablation": "context_sanity", "dataset": "context", "variant": "v2-aspp-l", "seed": seed})
            rows[-1] |= {"split": split, "knob": "reach", "value": "ASPP-L", "config": "c.yaml", "IoU": iou}
            rows[-1] |= {"mIoU": (background + a + b) / 3, "pixel_acc": 0.99, "info": {"valid taps @48px": 0.8}}
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    load("summarize")  # puts the scripts' folder on sys.path, so `summary` is the scripts' module
    table, _ = sys.modules["summary"].summarize(folder)
    text = table.read_text()
    overall = [line for line in text.splitlines() if line.startswith("| v2-aspp-l | c |")]
    assert len(overall) == 1 and "| 2 |" in overall[0] and "| 0.800 ± 0.000 |" in overall[0]  # one row, both seeds
    assert "| variant | mixed | d48 | d96 | d144 | d192 | global |" in text
    per_split = [line for line in text.splitlines() if line.startswith("| v2-aspp-l | ") and line not in overall]
    assert per_split[0] == "| v2-aspp-l | " + " | ".join(["82.3 ± 9.9"] * 6) + " |"  # mIoU of seeds: 89.3, 75.3
    assert per_split[1] == "| v2-aspp-l | " + " | ".join(["75.0 ± 14.1"] * 6) + " |"  # classes A, B; C absent


@pytest.mark.slow  # two real fit + test runs: about a minute on 2 loaded cores
def test_one_tiny_ablation_end_to_end_then_summary(tmp_path, capsys) -> None:
    argv = ["--quick", "--seeds", "1", "--only", "v3plus-*", "--trimap-widths", "1", "2", "--out", str(tmp_path)]
    records = load("image_pooling").main(argv)
    assert [r["variant"] for r in records] == ["v3plus-pool", "v3plus-nopool"]
    lines = (tmp_path / "image_pooling" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    for r in records:
        assert 0.0 <= r["mIoU"] <= 1.0 and set(r["IoU"]) >= {"background", "ring"}
        assert set(r["trimap"]) == {"1", "2"} and all(0.0 <= v <= 1.0 for v in r["trimap"].values())
        assert r["seconds_per_image"] > 0 and r["gmacs"] > 0 and r["fit_seconds"] > 0
        assert Path(r["ckpt"]).is_file()
    assert records[0]["gmacs"] > records[1]["gmacs"]  # the pooling branch costs multiply-adds
    capsys.readouterr()
    assert load("image_pooling").main(argv) == []  # recorded runs are not run again
    summarize = load("summarize")
    table, plot = summarize.main(["--out", str(tmp_path)])
    rows = [line for line in table.read_text().splitlines() if line.startswith("| v3plus")]
    assert [row.split(" | ")[0] for row in rows] == ["| v3plus-pool", "| v3plus-nopool"]
    header = table.read_text().splitlines()[2]
    assert "test mIoU (%)" in header and "trimap 2px (%)" in header and "GMACs/image" in header
    mean = float(rows[0].split(" | ")[5])
    assert math.isclose(mean, round(records[0]["mIoU"] * 100, 2))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sys.modules["summary"].summarize(tmp_path / "image_pooling", wandb=True)  # WANDB_MODE=disabled in tests

    # the decoder ablation's "decoder on" run is image pooling's "on" run: tested, not trained again
    ckpt = Path(records[0]["ckpt"])
    written = ckpt.stat().st_mtime_ns
    (decoder,) = load("decoder").main(["--quick", "--seeds", "1", "--only", "v3plus-decoder", "--out", str(tmp_path)])
    assert decoder["ckpt"] == records[0]["ckpt"] and decoder["fit_seconds"] == records[0]["fit_seconds"]
    assert ckpt.stat().st_mtime_ns == written

    # a run trained from another version of its config is not reused silently
    fit_json = ckpt.parent.parent / "fit.json"
    fit_json.write_text(json.dumps({**json.loads(fit_json.read_text()), "config_sha1": "0" * 12}))
    with pytest.raises(RuntimeError, match=f"{ckpt.parent.parent.name} was trained from another version"):
        load("image_pooling").main(argv)


@pytest.mark.slow  # two tiny fits and twelve tests of 256-px images: about a minute on 2 loaded cores
def test_context_sanity_end_to_end_records_and_summarizes_every_test_split(tmp_path, capsys) -> None:
    records = load("context_sanity").main(["--quick", "--seeds", "1", "--out", str(tmp_path)])
    assert [(r["variant"], r["split"]) for r in records] == [
        (v, s) for v in ("v3-1x1-only", "v2-aspp-l") for s in SPLITS
    ]
    assert all(r["dataset"] == "context" and set(r["IoU"]) == {"background", "A", "B", "C"} for r in records)
    asppl = records[-1]["info"]
    assert asppl["feature map (px)"] == 32 and set(asppl) >= {f"valid taps @{d}px" for d in (48, 96, 144, 192)}
    assert asppl["valid taps @48px"] > asppl["valid taps @96px"] > asppl["valid taps @192px"]
    assert "valid taps" not in records[0]["info"]  # the 1x1-only head has no atrous branch
    text = (tmp_path / "context_sanity" / "summary.md").read_text()
    assert "| variant | mixed | d48 | d96 | d144 | d192 | global |" in text
