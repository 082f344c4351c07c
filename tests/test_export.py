"""Export to ONNX and TorchScript: parity with PyTorch at other input sizes and output strides, the CLI, errors."""

import copy
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import randomize_bn
from deeplab_lit import cli
from deeplab_lit.errors import ConfigError
from deeplab_lit.export import ExportedSegmenter, Segmenter, export_onnx, export_torchscript, load_exported, main
from deeplab_lit.nets import DeepLabV3PlusNet
from deeplab_lit.nets.msc import MSC
from deeplab_lit.systems import DeepLabV2

SIZE = 65
TOL = 1e-4


def make_realistic(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and O(1) logits, so a 1e-4 tolerance means something."""
    randomize_bn(net)
    for name in net.classifier_names():
        weight = net.get_submodule(name).weight.data
        weight.normal_(0, 2 / weight[0].numel() ** 0.5)
    return net.eval()


def tiny_net() -> DeepLabV3PlusNet:
    net = DeepLabV3PlusNet(3, backbone="resnet18", aspp_channels=16, low_level_channels=8, decoder_channels=16)
    return make_realistic(net)


def tiny_net_at(output_stride: int, net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` re-strided to ``output_stride``."""
    other = copy.deepcopy(net)
    other.set_output_stride(output_stride)
    return other


def reference(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return Segmenter(net).eval()(x)


def inputs() -> list[torch.Tensor]:
    return [torch.randn(1, 3, SIZE, SIZE), torch.randn(2, 3, 33, 49)]  # the export size and another one


@pytest.mark.parametrize("output_stride", [None, 8])
def test_onnx_matches_pytorch_at_other_sizes_and_output_stride(tmp_path, output_stride) -> None:
    net = tiny_net()
    expected = tiny_net_at(output_stride or 16, net)
    path = export_onnx(net, tmp_path / "m.onnx", SIZE, SIZE, output_stride=output_stride)
    exported = ExportedSegmenter(path)
    assert exported.session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for x in inputs():
        ref = reference(expected, x)
        out = exported(x)["out"]
        assert out.shape == (x.shape[0], 3, *x.shape[-2:])
        assert ref.abs().max() > 0.1 and (out - ref).abs().max() < TOL
    if output_stride:  # the stride changes the logits, so the comparisons above tell them apart
        x = inputs()[0]
        assert (reference(tiny_net_at(16, net), x) - reference(expected, x)).abs().max() > 1e-2


def test_static_onnx_export_fixes_the_input_shape(tmp_path) -> None:
    path = export_onnx(tiny_net(), tmp_path / "m.onnx", 33, 41, dynamic=False)
    assert load_exported(path).session.get_inputs()[0].shape == [1, 3, 33, 41]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_round_trip_matches_pytorch_at_other_sizes_and_output_stride(tmp_path) -> None:
    net = tiny_net()
    expected = tiny_net_at(8, net)  # OS 16 (the default) is exported by the checkpoint test below
    path = export_torchscript(net, tmp_path / "m.pt", SIZE, SIZE, output_stride=8)
    loaded = torch.jit.load(str(path))  # a plain TorchScript consumer
    for x in inputs():
        with torch.no_grad():
            out = loaded(x)
        assert (out - reference(expected, x)).abs().max() < TOL
    assert torch.equal(ExportedSegmenter(path)(x)["out"], out)


def test_imports_run_one_way_export_systems_inference() -> None:
    # A fresh interpreter: inference loads exported files without Lightning, and systems never imports export.
    code = (
        "import sys\n"
        "import deeplab_lit.inference.exported\n"
        "assert 'lightning' not in sys.modules and 'deeplab_lit.systems' not in sys.modules, sorted(sys.modules)\n"
        "import deeplab_lit.systems\n"
        "assert 'deeplab_lit.export' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exported_segmenter_rejects_unknown_suffix_and_missing_file(tmp_path) -> None:
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown suffix"):
        ExportedSegmenter(tmp_path / "m.txt")
    with pytest.raises(ConfigError, match="not found"):
        ExportedSegmenter(tmp_path / "missing.onnx")


def test_main_exports_a_cli_checkpoint_at_its_eval_output_stride(tmp_path, capsys) -> None:
    args = ["--model", "DeepLabV3Plus", "--data", "ShapesDataModule", "--trainer.logger", "false"]
    args += ["--model.backbone", "resnet18", "--model.aspp_channels", "16", "--model.decoder_channels", "16"]
    args += ["--model.eval_output_stride", "8", "--trainer.default_root_dir", str(tmp_path)]
    run = cli.main(args, run=False)
    make_realistic(run.model.net)
    run.trainer.strategy.connect(run.model)
    run.trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert torch.load(tmp_path / "m.ckpt")["hyper_parameters"]["_class_path"] == "deeplab_lit.systems.DeepLabV3Plus"
    out = main(["--ckpt", str(tmp_path / "m.ckpt"), "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert capsys.readouterr().out.strip() == str(out)
    expected = tiny_net_at(8, run.model.net)
    x = torch.randn(1, 3, 49, 41)
    ref = reference(expected, x)
    assert ref.shape == (1, 7, 49, 41) and (load_exported(out)(x)["out"] - ref).abs().max() < TOL


def test_main_exports_a_plain_checkpoint_with_msc_to_torchscript(tmp_path) -> None:
    model = DeepLabV2(num_classes=3, backbone="resnet18", msc_scales=(0.5,))
    make_realistic(model.net)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "v2.ckpt")
    argv = ["--ckpt", str(tmp_path / "v2.ckpt"), "--format", "torchscript", "--output", str(tmp_path / "v2.ts")]
    out = main([*argv, "--size", "41", "41"])
    x = torch.randn(1, 3, 45, 37)
    ref = reference(MSC(model.net, (0.5,)), x)
    assert (load_exported(out)(x)["out"] - ref).abs().max() < TOL
    assert (ref - reference(model.net, x)).abs().max() > 1e-3  # MSC was exported, not the single scale


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--format", "tflite", "--output", "m.tflite"], "invalid choice"),
        (["--format", "onnx", "--output", "m.onnx"], "missing.ckpt: no such file"),
    ],
)
def test_main_rejects_unknown_format_and_missing_checkpoint(tmp_path, capsys, args, match) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt", str(tmp_path / "missing.ckpt"), *args])
    assert exit_.value.code != 0 and match in capsys.readouterr().err


def test_main_rejects_output_suffix_of_another_format(tmp_path, capsys) -> None:
    Path(tmp_path / "m.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path / "m.ckpt"), "--format", "torchscript", "--output", str(tmp_path / "m.onnx")])
    assert "does not fit" in capsys.readouterr().err
