"""experiments/configs/official: each config builds the released graph that its TF checkpoint fills."""

import importlib
from pathlib import Path

import pytest
import yaml

from deeplab_lit.nets.tf_zoo import network_plan

OFFICIAL = sorted((Path(__file__).parents[1] / "experiments" / "configs" / "official").glob("*.yaml"))
TF_ZOO = [p for p in OFFICIAL if "_caffe" not in p.stem]  # the Caffe releases: tests/test_caffe.py


@pytest.mark.parametrize("config", TF_ZOO, ids=lambda p: p.stem)
def test_official_config_builds_the_released_graph_with_tf_semantics(config) -> None:
    text = config.read_text()
    assert "Published" in text and "model_zoo.md" in text and "python -m deeplab_lit test --config" in text
    spec = yaml.safe_load(text)
    module, name = spec["model"]["class_path"].rsplit(".", 1)
    system = getattr(importlib.import_module(module), name)(**spec["model"]["init_args"])
    net = system.net
    plan = network_plan(net)
    own = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(plan) == sorted(own)  # every parameter has its TF variable: a full checkpoint fills the net
    # MobileNetV2 to layer_18 (255) + image_pooling, aspp0, concat_projection (5 each) + logits/semantic (2)
    assert len({name for name, _ in plan.values()}) == 272
    assert net.align_corners and net.aspp.pooling.align_corners and len(net.aspp.convs) == 1
    assert {m.eps for n, m in net.backbone.named_modules() if n.endswith((".1", ".3")) and hasattr(m, "eps")} == {1e-3}
    assert spec["data"]["init_args"]["mean"] == spec["data"]["init_args"]["std"] == [0.5, 0.5, 0.5]
    # TF's evaluation (tests/test_tf_protocol.py): each image padded to the dataset's eval crop with the mean pixel
    crop = {"VOCDataModule": 513, "CityscapesDataModule": [1025, 2049]}[spec["data"]["class_path"].rsplit(".", 1)[1]]
    assert system.tta.crop == crop and system.tta.window is None
