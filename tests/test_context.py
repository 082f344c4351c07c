"""The context task: determinism, options and their errors, the marker's exact place, the rule "the label is
decidable from the image and not from the object alone", and the context configs through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from deeplab_lit.cli import main
from deeplab_lit.data import ContextDataModule, ContextShapesDataset
from deeplab_lit.data.context import DIRECTIONS, MARKER_COLOURS, OBJECT_COLOURS
from deeplab_lit.errors import ConfigError

CONFIGS = sorted(Path("experiments/configs/context").glob("*.yaml"))


def test_same_seed_and_index_is_deterministic_and_order_independent() -> None:
    forward = ContextShapesDataset(6, seed=4)
    first = [forward[i] for i in range(6)]
    backward = ContextShapesDataset(6, seed=4, cache=True)
    for i in reversed(range(6)):
        image, mask = backward[i]
        assert torch.equal(image, first[i][0]) and torch.equal(mask, first[i][1])
        assert backward.cue(i) == forward.cue(i)
    other = ContextShapesDataset(6, seed=5)[0]
    assert not torch.equal(other[0], first[0][0])
    assert first[0][0].shape == (3, 256, 256) and first[0][0].dtype == torch.uint8 and first[0][1].dtype == torch.uint8


def test_cue_kinds_and_distances_choose_what_is_drawn() -> None:
    mixed = [ContextShapesDataset(60, seed=1).cue(i) for i in range(60)]
    assert {c["kind"] for c in mixed} == {"local", "global"}
    assert {c["distance"] for c in mixed if c["kind"] == "local"} == {48, 96, 144, 192}
    assert {c["direction"] for c in mixed if c["kind"] == "local"} <= set(DIRECTIONS)
    local = ContextShapesDataset(30, seed=1, cue_kinds=["local"], cue_distances=[96])
    assert all(local.cue(i)["kind"] == "local" and local.cue(i)["distance"] == 96 for i in range(30))
    assert all(len(local.cue(i)["objects"]) == 1 for i in range(30))
    glob = ContextShapesDataset(30, seed=1, cue_kinds=["global"], max_objects=3)
    cues = [glob.cue(i) for i in range(30)]
    assert all(c["kind"] == "global" and c["marker"] is None for c in cues)
    assert {len(c["objects"]) for c in cues} == {1, 2, 3}


@pytest.mark.parametrize(("object_size", "marker_size"), [(16, 16), (24, 24), (12, 20)])
def test_object_and_marker_sizes(object_size, marker_size) -> None:
    sizes = {"object_size": object_size, "marker_size": marker_size}
    ds = ContextShapesDataset(10, image_size=128, cue_kinds=["local"], cue_distances=[40, 64], **sizes)
    areas = set()
    for i in range(10):
        image, mask, cue = ds.sample(i)
        areas.add(int((mask > 0).sum()))
        my, mx = cue["marker"]
        patch = image[my : my + marker_size, mx : mx + marker_size].astype(float)
        assert np.abs(patch.mean((0, 1)) - MARKER_COLOURS[cue["objects"][0]["class"] - 1]).max() < 6
        assert (mask[my : my + marker_size, mx : mx + marker_size] == 0).all()  # the marker is background
    assert len(areas) == 1 and object_size**2 * 0.7 < areas.pop() < object_size**2  # one disc, whatever the class


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"cue_kinds": []}, "cue_kinds"),
        ({"cue_kinds": ["local", "far"]}, "cue_kinds"),
        ({"cue_kinds": ["local", "local"]}, "cue_kinds"),
        ({"cue_distances": []}, "cue_distances"),
        ({"cue_distances": [0, 48]}, "cue_distances"),
        ({"cue_distances": [241]}, "cue_distances"),  # 256 px minus one 16-px object: at most 240
        ({"object_size": 2}, "object_size"),
        ({"object_size": 65}, "object_size"),
        ({"marker_size": 12}, "marker_size"),  # smaller than the object
        ({"marker_size": 17}, "marker_size"),  # odd difference: not centred on the offset
        ({"max_objects": 0}, "max_objects"),
        ({"halo": -1}, "halo"),
        ({"image_size": 16}, "image_size"),
    ],
)
def test_bad_options_raise_config_errors_naming_the_argument(kwargs, argument) -> None:
    with pytest.raises(ConfigError, match=rf"{argument}.*--data\.init_args\.{argument}"):
        ContextShapesDataset(4, **kwargs)
    with pytest.raises(ConfigError, match=argument):
        ContextDataModule(**kwargs)


def test_global_cue_alone_accepts_any_distances() -> None:
    assert ContextShapesDataset(2, cue_kinds=["global"], cue_distances=[]).cue(0)["kind"] == "global"


def test_marker_sits_at_exactly_distance_d_along_one_of_the_eight_directions_inside_the_image() -> None:
    ds = ContextShapesDataset(80, seed=2, cue_kinds=["local"])
    seen = set()
    for i in range(80):
        _, mask, cue = ds.sample(i)
        (obj,) = cue["objects"]
        (oy, ox), (my, mx), (dy, dx), d = obj["box"], cue["marker"], cue["direction"], cue["distance"]
        assert (my - oy, mx - ox) == (dy * d, dx * d)  # equal sizes: the boxes' corners are D apart like the centres
        assert 0 <= my <= 256 - 16 and 0 <= mx <= 256 - 16 and 0 <= oy <= 256 - 16 and 0 <= ox <= 256 - 16
        ys, xs = np.nonzero(mask)
        assert (ys.min() + ys.max()) / 2 == oy + 7.5 and (xs.min() + xs.max()) / 2 == ox + 7.5  # the object's centre
        seen.add((dy, dx))
    assert seen == set(DIRECTIONS)


def read_class(image: np.ndarray, mask: np.ndarray) -> int:
    """The class an image's cue names, read from the pixels alone: a marker's colour if there is a marker, else the
    background's stripes (rows alike: horizontal → 1; columns alike: vertical → 2; neither: checkerboard → 3)."""
    pixels = image.reshape(-1, 3).astype(float)
    near = np.linalg.norm(pixels[:, None] - MARKER_COLOURS[None], axis=2) < 40  # (H*W, 3)
    if near.sum() >= 100:
        return int(near.sum(0).argmax()) + 1
    far = ~ndimage.binary_dilation(mask > 0, iterations=40)  # the background beyond the plain halo
    grey = image.astype(float).mean(2)
    along_rows = np.abs(np.diff(grey, axis=1))[far[:, 1:] & far[:, :-1]].mean()  # small for horizontal stripes
    along_cols = np.abs(np.diff(grey, axis=0))[far[1:] & far[:-1]].mean()
    if min(along_rows, along_cols) < 0.5 * max(along_rows, along_cols):
        return 1 if along_rows < along_cols else 2
    return 3


def test_the_label_is_decidable_from_the_image_and_not_from_the_object_alone() -> None:
    ds = ContextShapesDataset(120, seed=3)
    colours: dict[int, set[int]] = {1: set(), 2: set(), 3: set()}
    shapes = set()
    for i in range(120):
        image, mask, _ = ds.sample(i)
        rule = read_class(image, mask)
        components, count = ndimage.label(mask > 0)
        for k in range(1, count + 1):
            region = components == k
            (label,) = set(mask[region].tolist())
            assert rule == label  # the image decides every object's class
            mean = image[region].astype(float).mean(0)
            colour = int(np.linalg.norm(OBJECT_COLOURS - mean, axis=1).argmin())
            assert np.linalg.norm(OBJECT_COLOURS[colour] - mean) < 6  # solid: one pool colour plus noise
            colours[label].add(colour)
            ys, xs = np.nonzero(region)
            shapes.add(tuple(map(tuple, np.stack([ys - ys.min(), xs - xs.min()]).T.tolist())))
    # the object alone carries no class: one shape for every object, and every class shows every pool colour
    assert len(shapes) == 1
    assert colours[1] == colours[2] == colours[3] == set(range(len(OBJECT_COLOURS)))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_context_config_runs_fast_dev_run(tmp_path, config) -> None:
    tiny = ["--data.init_args.num_train", "4", "--data.init_args.num_val", "2", "--data.init_args.num_test", "2"]
    tiny += ["--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "1"]
    tiny += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    tiny += ["--checkpoint.dirpath", str(tmp_path / "checkpoints")]  # the notebook's config names a folder in runs/
    cli = main(["fit", "--config", str(config), *tiny, "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.num_classes == 4 and cli.model.net.backbone.out_channels == 128


def test_a_bad_cue_distance_on_the_command_line_is_one_short_error(tmp_path) -> None:
    config = str(CONFIGS[0])
    args = ["fit", "--config", config, "--data.init_args.cue_distances", "[48, 300]", "--trainer.fast_dev_run", "1"]
    done = subprocess.run([sys.executable, "-m", "deeplab_lit", *args], capture_output=True, text=True, cwd=Path.cwd())
    assert done.returncode == 1
    assert "cue_distances" in done.stderr and "300" in done.stderr and "Traceback" not in done.stderr
