"""Cityscapes in its exact on-disk layout: the official label table, agreement with torchvision, prediction export."""

import copy
from pathlib import Path

import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official_eval
import numpy as np
import pytest
import torch
import torchvision
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from conftest import recipe_args
from deeplab_lit.cli import main
from deeplab_lit.data import DataError
from deeplab_lit.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    ID_TO_TRAINID,
    TRAINID_TO_ID,
    CityscapesSegmentation,
    to_label_ids,
    write_label_ids,
)

SPLITS = {
    "train": {"bochum": ["bochum_000000_000313"], "aachen": ["aachen_000001_000019", "aachen_000000_000019"]},
    "val": {"lindau": ["lindau_000000_000019"], "frankfurt": ["frankfurt_000000_000294"]},
}
ORDER = {
    "train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
    "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
}
H, W = 8, 16
FIRST = "gtFine/train/aachen/aachen_000000_000019"  # the first pair in sorted order, decoded at construction


def trainid_of(label_id: int) -> int:
    """The train id straight from cityscapesscripts' table, independent of the module's lookup table."""
    train_id = id2label[label_id].trainId
    return train_id if 0 <= train_id < 255 else 255


def write_label_ids_png(path: Path, ids: np.ndarray) -> None:
    Image.fromarray(ids.astype(np.uint8)).save(path)


@pytest.fixture
def cityscapes(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split, cities in SPLITS.items():
        for city, names in cities.items():
            (tmp_path / "leftImg8bit" / split / city).mkdir(parents=True)
            (tmp_path / "gtFine" / split / city).mkdir(parents=True)
            for name in names:
                rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                Image.fromarray(rgb).save(tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
                ids = rng.choice([0, 1, 5, 7, 26, 33], (H, W))
                ids.flat[:34] = rng.permutation(34)  # every labelId of the table in every image
                write_label_ids_png(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", ids)
    return tmp_path


def test_constants_come_from_the_official_table() -> None:
    assert len(CITYSCAPES_CLASSES) == 19 == CityscapesSegmentation.num_classes
    assert CITYSCAPES_CLASSES[:2] == ("road", "sidewalk") and CITYSCAPES_CLASSES[13] == "car"
    assert CITYSCAPES_CLASSES[-1] == "bicycle" and CITYSCAPES_PALETTE[-1] == (119, 11, 32)
    assert ID_TO_TRAINID.dtype == np.uint8 and ID_TO_TRAINID.shape == (256,)
    assert [int(ID_TO_TRAINID[i]) for i in range(34)] == [trainid_of(i) for i in range(34)]
    assert (ID_TO_TRAINID[34:] == 255).all()
    assert (ID_TO_TRAINID[[7, 26, 33, 5, 0, 1]] == [0, 13, 18, 255, 255, 255]).all()
    assert [int(ID_TO_TRAINID[TRAINID_TO_ID[t]]) for t in range(19)] == list(range(19))
    assert [id2label[int(i)].name for i in TRAINID_TO_ID] == list(CITYSCAPES_CLASSES)


@pytest.mark.parametrize("split", ["train", "val"])
def test_agrees_with_torchvision_and_the_official_table(cityscapes, split) -> None:
    ours = CityscapesSegmentation(cityscapes, split)
    ref = torchvision.datasets.Cityscapes(str(cityscapes), split=split, mode="fine", target_type="semantic")
    assert sorted(ours.images) == sorted(Path(p) for p in ref.images)
    assert [p.name[: -len("_leftImg8bit.png")] for p in ours.images] == ORDER[split]
    assert [t.name.endswith("_gtFine_labelIds.png") for t in ours.targets] == [True] * len(ours)
    ref_index = {Path(p): i for i, p in enumerate(ref.images)}
    for i in range(len(ours)):
        image, mask = ours[i]
        ref_image, ref_ids = ref[ref_index[ours.images[i]]]
        ref_ids = np.asarray(ref_ids)
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.uint8 and mask.shape == (H, W)
        assert torch.equal(image, torch.from_numpy(np.array(ref_image)).permute(2, 0, 1))
        expected = np.vectorize(trainid_of)(ref_ids)
        assert torch.equal(mask, torch.from_numpy(expected.astype(np.uint8)))
        for label_id, train_id in ((7, 0), (26, 13), (33, 18), (5, 255), (0, 255), (1, 255)):
            assert (mask[torch.from_numpy(ref_ids == label_id)] == train_id).all()
        assert set(mask.unique().tolist()) == set(range(19)) | {255}


def test_label_train_ids_are_preferred_when_present(cityscapes) -> None:
    train_ids = np.full((H, W), 3, np.uint8)
    train_ids[:, :4] = 255
    train_ids[0, 4] = 18
    write_label_ids_png(cityscapes / f"{FIRST}_gtFine_labelTrainIds.png", train_ids)
    ds = CityscapesSegmentation(cityscapes, "train")
    assert ds.targets[0].name == "aachen_000000_000019_gtFine_labelTrainIds.png"
    assert ds.targets[1].name == "aachen_000001_000019_gtFine_labelIds.png"
    assert torch.equal(ds[0][1], torch.from_numpy(train_ids.astype(np.uint8)))


def test_to_label_ids_round_trip_and_the_written_png() -> None:
    train_ids = np.array([list(range(19)) + [255]], dtype=np.int64)
    assert to_label_ids(train_ids).tolist() == [TRAINID_TO_ID.tolist() + [0]]
    assert (ID_TO_TRAINID[to_label_ids(np.arange(19))] == np.arange(19)).all()
    for bad in (np.array([[19]]), np.array([[-1]]), np.zeros((2, 2), np.float32)):
        with pytest.raises(ValueError):
            to_label_ids(bad)


def test_written_predictions_read_back_and_score_perfectly_with_the_official_script(cityscapes, tmp_path) -> None:
    ds = CityscapesSegmentation(cityscapes, "val")
    gt = ds.targets[0]
    prediction = tmp_path / "results" / "lindau_000000_000019_leftImg8bit.png"
    write_label_ids(prediction, ds[0][1].numpy())
    with Image.open(prediction) as im:
        assert im.format == "PNG" and im.mode == "L"
        written = np.asarray(im)
    gt_ids = np.asarray(Image.open(gt))
    evaluated = ID_TO_TRAINID[gt_ids] != 255
    assert (written[evaluated] == gt_ids[evaluated]).all() and (written[~evaluated] == 0).all()

    args = copy.copy(official_eval.args)
    args.evalInstLevelScore, args.quiet = False, True
    confusion = official_eval.generateMatrix(args)
    assert official_eval.evaluatePair(str(prediction), str(gt), confusion, {}, {}, args) == H * W
    scores = [official_eval.getIouScoreForLabel(int(i), confusion, args) for i in TRAINID_TO_ID]
    assert scores == [1.0] * 19


def break_layout(root: Path) -> None:
    (root / "gtFine").rename(root / "labels")


def break_empty_split(root: Path) -> None:
    for image in (root / "leftImg8bit/train").glob("*/*.png"):
        image.unlink()


def break_missing_label(root: Path) -> None:
    (root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").unlink()


def break_size(root: Path) -> None:
    write_label_ids_png(root / f"{FIRST}_gtFine_labelIds.png", np.full((4, 4), 7))


def break_label_id(root: Path) -> None:
    ids = np.full((H, W), 7)
    ids[2, 3] = 200
    write_label_ids_png(root / f"{FIRST}_gtFine_labelIds.png", ids)


def break_train_id(root: Path) -> None:
    ids = np.zeros((H, W))
    ids[2, 3] = 19
    write_label_ids_png(root / f"{FIRST}_gtFine_labelTrainIds.png", ids)


def break_corrupt_image(root: Path) -> None:
    (root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").write_bytes(b"\x89PNG\r\n truncated")


def break_mask_mode(root: Path) -> None:
    Image.new("RGB", (W, H)).save(root / f"{FIRST}_gtFine_labelIds.png")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (break_layout, r"is not a Cityscapes root: missing gtFine; expected <root>/leftImg8bit/<split>/<city>/"),
        (break_empty_split, r"split folder .*leftImg8bit/train has no <city>/<name>_leftImg8bit.png images"),
        (
            break_missing_label,
            r"label file .*gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png for image "
            r".*aachen_000001_000019_leftImg8bit.png is missing",
        ),
        (break_size, r"mask .*aachen_000000_000019_gtFine_labelIds.png is 4x4 but image .*_leftImg8bit.png is 16x8"),
        (break_label_id, r"mask .*aachen_000000_000019_gtFine_labelIds.png has label ids \[200\] that are not"),
        (break_train_id, r"mask .*_labelTrainIds.png has label values \[19\] outside \[0, 19\) and 255"),
        (break_corrupt_image, r"image .*aachen_000000_000019_leftImg8bit.png is corrupt or truncated"),
        (break_mask_mode, r"mask .*aachen_000000_000019_gtFine_labelIds.png has mode RGB"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_bad_input_names_the_file_and_the_problem(cityscapes, damage, match) -> None:
    damage(cityscapes)
    with pytest.raises(DataError, match=match):
        CityscapesSegmentation(cityscapes, "train")


def test_missing_split_folder_and_bad_later_files(cityscapes) -> None:
    with pytest.raises(DataError, match=r"split folder .*leftImg8bit/test is missing"):
        CityscapesSegmentation(cityscapes, "test")
    ds = CityscapesSegmentation(cityscapes, "train")
    write_label_ids_png(ds.targets[2], np.full((H, W), 255))
    with pytest.raises(DataError, match=r"bochum_000000_000313_gtFine_labelIds.png has label ids \[255\]"):
        ds[2]


@pytest.mark.parametrize("config", sorted(Path("experiments/configs/cityscapes").glob("*.yaml")), ids=lambda p: p.stem)
def test_cityscapes_recipes_run_on_a_tiny_tree(cityscapes, tmp_path, config) -> None:
    common = recipe_args(config, cityscapes, tmp_path)
    cli = main(["fit", *common, "--trainer.fast_dev_run", "1"])
    assert cli.trainer.global_step == 1 and cli.model.hparams.num_classes == 19
    if "v3plus" not in config.stem:
        return
    # Predictions go back to official label ids for the evaluation script.
    ckpt = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    images = cityscapes / "leftImg8bit/val/lindau"
    out = tmp_path / "pred"
    main(["predict", *common, "--ckpt_path", str(ckpt), "--data.init_args.predict_path", str(images),
          "--prediction.output_dir", str(out), "--prediction.label_ids", "true"])  # fmt: skip
    ids = np.asarray(Image.open(out / "lindau_000000_000019_leftImg8bit_labelIds.png"))
    train_ids = np.asarray(Image.open(out / "lindau_000000_000019_leftImg8bit.png"))
    assert ids.shape == (H, W) and (ids == TRAINID_TO_ID[train_ids]).all()
