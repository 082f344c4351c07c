"""experiments/configs/official: each config builds the released graph that its TF checkpoint fills."""

import importlib
from pathlib import Path

import pytest
import yaml

from deeplab_lit.nets.tf_zoo import network_plan

OFFICIAL = sorted((Path(__file__).parents[1] / "experiments" / "configs" / "official").glob("*.yaml"))
TF_ZOO = [p for p in OFFICIAL if "_caffe" not in p.stem]  # the Caffe releases: tests/test_caffe.py
# TF variables of each released graph, counted from its model.py and backbone:
# MobileNetV2 to layer_18 (255) + image_pooling, aspp0, concat_projection (5 each) + logits/semantic (2);
# Xception-65 (stem 10 + 21 units of three separable convs, 30 each, + 4 shortcuts, 5 each) + image_pooling, aspp0,
# concat_projection, decoder/feature_projection0 (5 each) + separable aspp1-3 and decoder_conv0-1 (10 each) + logits
VARIABLES = {"mobilenetv2": 272, "xception65": 660 + 20 + 50 + 2}


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
    assert len({name for name, _ in plan.values()}) == VARIABLES[config.stem.split("_")[0]]
    assert net.align_corners and net.aspp.pooling.align_corners
    if config.stem.startswith("xception65"):  # V3+: separable ASPP (6, 12, 18), decoder on TF's end point
        assert net.aspp.rates == (6, 12, 18) and net.decoder.align_corners and net.backbone.tf_decoder_end_point
        assert all(conv[0].groups > 1 for conv in [*net.aspp.convs[1:], *net.decoder.convs])
    else:
        assert len(net.aspp.convs) == 1
    assert {m.eps for m in net.backbone.modules() if hasattr(m, "running_var")} == {1e-3}
    assert spec["data"]["init_args"]["mean"] == spec["data"]["init_args"]["std"] == [0.5, 0.5, 0.5]
    # TF's evaluation (tests/test_tf_protocol.py): each image padded to the dataset's eval crop with the mean pixel
    crop = {"VOCDataModule": 513, "CityscapesDataModule": [1025, 2049]}[spec["data"]["class_path"].rsplit(".", 1)[1]]
    assert system.tta.crop == crop and system.tta.window is None
