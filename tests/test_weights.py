"""Pretrained weights: files tests save themselves, VGG fc decimation, torchvision parity, clear mismatch errors."""

import pytest
import torch
import torchvision

from conftest import randomize_bn
from deeplab_lit.errors import CheckpointError
from deeplab_lit.nets import DeepLabV1Net, DeepLabV2Net, DeepLabV3Net, build_backbone, convert_torchvision_deeplabv3
from deeplab_lit.nets.weights import load_checked, read_state_dict


def test_resnet_backbone_loads_a_saved_torchvision_state_dict(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pth")
    backbone, rest = build_backbone("resnet18", 16, weights=str(tmp_path / "r18.pth"))
    own = backbone.state_dict()
    assert set(rest) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_mobilenet_and_xception_load_their_classification_weights(tmp_path) -> None:
    import timm

    mobilenet = torchvision.models.mobilenet_v2().state_dict()
    torch.save(mobilenet, tmp_path / "mb.pth")
    backbone, _ = build_backbone("mobilenet_v2", 16, weights=str(tmp_path / "mb.pth"))
    torch.testing.assert_close(backbone.features[5].conv[1][0].weight, mobilenet["features.5.conv.1.0.weight"])

    xception = timm.create_model("xception65").state_dict()
    torch.save(xception, tmp_path / "x65.pth")
    backbone, rest = build_backbone("xception65", 16, weights=str(tmp_path / "x65.pth"))
    assert rest and all(k.startswith("body.head.") for k in rest)
    key = "blocks.7.stack.conv2.conv_dw.weight"
    torch.testing.assert_close(backbone.body.state_dict()[key.replace("blocks.", "blocks_")], xception[key])


def test_vgg_fc_layers_are_decimated_into_fc6_fc7(tmp_path) -> None:
    state = torchvision.models.vgg16().state_dict()
    torch.save(state, tmp_path / "vgg16.pth")
    net = DeepLabV1Net(21, backbone_weights=str(tmp_path / "vgg16.pth"))
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)[::4][:, :, [0, 3, 6]][:, :, :, [0, 3, 6]]
    torch.testing.assert_close(net.fc.fc6.weight, fc6)
    torch.testing.assert_close(net.fc.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    torch.testing.assert_close(net.fc.fc7.bias, state["classifier.3.bias"][::4])
    torch.testing.assert_close(net.backbone.features[28].weight, state["features.28.weight"])
    v2 = DeepLabV2Net(21, backbone="vgg16", backbone_weights=str(tmp_path / "vgg16.pth"))
    assert all(torch.equal(b[0].fc6.weight, fc6) for b in v2.aspp.branches)


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "deeplabv3_resnet101"])
def test_v3_in_torchvision_configuration_matches_torchvision(arch) -> None:
    tv = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None, aux_loss=True)
    randomize_bn(tv)
    ours = DeepLabV3Net(
        21, backbone=arch.split("_")[1], output_stride=8, multi_grid=None, head_convs=1, dropout=0.5, aux=True
    )
    load_checked(ours, convert_torchvision_deeplabv3(tv.state_dict()), source=arch)
    tv.eval(), ours.eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert (expected["out"] - got["out"]).abs().max() < 1e-4
    assert (expected["aux"] - got["aux"]).abs().max() < 1e-4


def test_mismatched_weights_name_every_bad_key(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    del state["layer2.0.conv1.weight"]
    state["layer3.0.bn1.weight"] = torch.ones(7)
    state["extra.weight"] = torch.ones(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        build_backbone("resnet18", 16, weights=str(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "bad.pth" in msg
    assert "missing (1): layer2.0.conv1.weight" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "layer3.0.bn1.weight: expected (256,), got (7,)" in msg


def test_weights_for_another_architecture_are_refused(tmp_path) -> None:
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="mis-shaped"):
        build_backbone("resnet18", 16, weights=str(tmp_path / "r50.pth"))


def test_missing_file_and_unknown_names_are_clear(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="nothere.pth: no such file"):
        read_state_dict(str(tmp_path / "nothere.pth"), "resnet50")
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K' for resnet50; choose from"):
        read_state_dict("IMAGENET9K", "resnet50")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights file .*junk.pth is not a PyTorch checkpoint"):
        read_state_dict(str(tmp_path / "junk.pth"), "resnet50")


def test_lightning_style_checkpoint_state_dict_is_unwrapped(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert read_state_dict(str(tmp_path / "ckpt.pth"), "resnet18").keys() == state.keys()
