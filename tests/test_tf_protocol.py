"""TF DeepLab's evaluation protocol (``--model.init_args.tf_eval_crop``) against TF's own, on a TF-written model.

The reference (tests/fixtures/tf_zoo/make_protocol_fixture.py) follows ``model.predict_labels_multi_scale`` in TF
ops on the ``mobilenetv2_dm05`` checkpoint: padding to the eval crop, corner-aligned scales, the logits grid, flips.
"""

import numpy as np
import pytest
import torch
from test_tf_zoo import FIXTURES, mobilenet_v3, unpack

from deeplab_lit.errors import ConfigError
from deeplab_lit.inference import TTA
from deeplab_lit.nets.tf_zoo import load_tf_checkpoint

CASES = {"os16": (16, (0.5, 1.0, 1.5), True), "os8": (8, (0.75, 1.25), False)}  # as make_protocol_fixture.py


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> torch.nn.Module:
    prefix, _ = unpack("mobilenetv2_dm05", tmp_path_factory.mktemp("protocol"))
    net = mobilenet_v3()
    load_tf_checkpoint(net, str(prefix))
    return net.eval()


@pytest.mark.parametrize("case", CASES)
def test_tf_eval_crop_gives_tf_deeplabs_probabilities(converted, case) -> None:
    expected = dict(np.load(FIXTURES / "protocol" / "expected.npz"))
    output_stride, scales, flip = CASES[case]
    x = (torch.from_numpy(expected["image"]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    converted.set_output_stride(output_stride)
    tta = TTA(scales, flip, crop=tuple(int(d) for d in expected["crop"]))
    with torch.no_grad():
        probs = tta(converted, x, x.shape[-2:], converted.logits_stride).numpy()
        plain = TTA(scales, flip)(converted, x, x.shape[-2:]).numpy()
    assert np.abs(probs - expected[f"probs_{case}"]).max() < 1e-4
    assert np.abs(plain - expected[f"probs_{case}"]).max() > 1e-2  # our own protocol is another computation


def test_an_image_larger_than_the_crop_and_a_window_with_the_crop_are_refused(converted) -> None:
    with pytest.raises(ConfigError, match=r"80x40 does not fit the evaluation crop 64x64.*tf_eval_crop"):
        TTA(crop=64)(converted, torch.zeros(1, 3, 80, 40), (80, 40), 16)
    with pytest.raises(ConfigError, match="tf_eval_crop and sliding_window"):
        TTA(window=64, crop=64)
