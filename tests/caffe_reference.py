"""Test helpers for the Caffe releases: a minimal protobuf encoder writing ``.caffemodel`` files in the real format
(``NetParameter`` with ``layer`` or legacy ``layers``, ``BlobProto`` with ``shape`` or legacy dims), random blobs
for each released architecture, and reference forward passes that follow the release's prototxts layer by layer
with plain torch ops in float64 (Caffe's pooling, BatchNorm/Scale and Interp written out, not our modules).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MEAN_BGR = (104.008, 116.669, 122.675)
VGG_CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128)] + [
    (f"conv{s}_{i}", cin if i == 1 else cout, cout)
    for s, cin, cout in ((3, 128, 256), (4, 256, 512), (5, 512, 512))
    for i in (1, 2, 3)
]
RESNET_UNITS = {2: (3, 64, 1, 1), 3: (4, 128, 2, 1), 4: (23, 256, 1, 2), 5: (3, 512, 1, 4)}  # units, width, s, rate


# -- protobuf wire format ---------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray, legacy: bool) -> bytes:
    if legacy:  # num, channels, height, width (V1 files)
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_field(i + 1, d) for i, d in enumerate(dims))
    else:
        head = _field(7, _field(1, b"".join(_varint(d) for d in array.shape)))
    return head + _field(5, np.ascontiguousarray(array, dtype="<f4").tobytes())


def write_caffemodel(path: Path, layers: list[tuple[str, str, list[np.ndarray]]], legacy: bool = False) -> Path:
    """A ``NetParameter`` with one layer per ``(name, type, blobs)``; ``legacy`` uses the V1 ``layers`` field."""
    out = [_field(1, b"net")]
    for name, kind, blobs in layers:
        if legacy:  # V1LayerParameter: name 4, type 5 (an enum: CONVOLUTION = 4, others as 0 here), blobs 6
            body = _field(4, name.encode()) + _field(5, 4 if kind == "Convolution" else 0)
            body += b"".join(_field(6, _blob(b, True)) for b in blobs)
            out.append(_field(2, body))
        else:  # LayerParameter: name 1, type 2, a phase (field 10) the reader skips, blobs 7
            body = _field(1, name.encode()) + _field(2, kind.encode()) + _field(10, 1)
            body += b"".join(_field(7, _blob(b, False)) for b in blobs)
            out.append(_field(100, body))
    path.write_bytes(b"".join(out))
    return path


# -- random blobs -----------------------------------------------------------------------------------------------------
def conv_blobs(rng: np.random.Generator, cout: int, cin: int, k: int, bias: bool = True, gain: float = 1.0):
    w = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(gain * np.sqrt(2 / (cin * k * k)))
    return [w, rng.uniform(-0.1, 0.1, cout).astype(np.float32)] if bias else [w]


def vgg_layers(rng: np.random.Generator) -> list[tuple[str, str, list[np.ndarray]]]:
    # conv1_1 sees raw pixels minus the mean (tens); a small gain keeps the logits near 1
    return [(n, "Convolution", conv_blobs(rng, co, ci, 3, gain=0.02 if n == "conv1_1" else 1.0))
            for n, ci, co in VGG_CONVS]  # fmt: skip


def largefov_layers(rng: np.random.Generator, classes: int = 21) -> list:
    return vgg_layers(rng) + [
        ("pool5a", "Pooling", []),
        ("fc6", "Convolution", conv_blobs(rng, 1024, 512, 3)),
        ("fc7", "Convolution", conv_blobs(rng, 1024, 1024, 1)),
        ("fc8_voc12", "Convolution", conv_blobs(rng, classes, 1024, 1)),
    ]


def aspp_vgg_layers(rng: np.random.Generator, classes: int = 21) -> list:
    out = vgg_layers(rng)
    for k in range(1, 5):
        out += [(f"fc6_{k}", "Convolution", conv_blobs(rng, 1024, 512, 3)),
                (f"fc7_{k}", "Convolution", conv_blobs(rng, 1024, 1024, 1)),
                (f"fc8_voc12_{k}", "Convolution", conv_blobs(rng, classes, 1024, 1, gain=0.5))]  # fmt: skip
    return out


def _bn_scale(rng: np.random.Generator, suffix: str, c: int, gamma: float) -> list:
    factor = np.float32(999.98)  # Caffe keeps sums scaled by a moving-average factor
    mean, var = rng.uniform(-0.2, 0.2, c).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(np.float32)
    return [
        (f"bn{suffix}", "BatchNorm", [mean * factor, var * factor, np.array([factor], np.float32)]),
        (f"scale{suffix}", "Scale", [rng.uniform(0.5, 1.5, c).astype(np.float32) * np.float32(gamma),
                                     rng.uniform(-0.1, 0.1, c).astype(np.float32)]),
    ]  # fmt: skip


def unit_name(stage: int, u: int) -> str:
    return "a" if u == 0 else (chr(ord("a") + u) if RESNET_UNITS[stage][0] <= 3 else f"b{u}")


def resnet_layers(rng: np.random.Generator, classes: int = 21, tag: str = "_voc12") -> list:
    out = [("conv1", "Convolution", conv_blobs(rng, 64, 3, 7, bias=False, gain=0.02))]
    out += [(n.replace("bnconv1", "bn_conv1").replace("scaleconv1", "scale_conv1"), t, b)
            for n, t, b in _bn_scale(rng, "conv1", 64, 1.0)]  # fmt: skip
    cin = 64
    for stage, (units, width, _, _) in RESNET_UNITS.items():
        for u in range(units):
            name = f"{stage}{unit_name(stage, u)}"
            if u == 0:
                out += [(f"res{name}_branch1", "Convolution", conv_blobs(rng, 4 * width, cin, 1, bias=False))]
                out += _bn_scale(rng, f"{name}_branch1", 4 * width, 0.5)
            for b, (ci, co, k) in {"2a": (cin, width, 1), "2b": (width, width, 3), "2c": (width, 4 * width, 1)}.items():
                out += [(f"res{name}_branch{b}", "Convolution", conv_blobs(rng, co, ci, k, bias=False))]
                out += _bn_scale(rng, f"{name}_branch{b}", co, 0.2 if b == "2c" else 1.0)
            cin = 4 * width
    out += [(f"fc1{tag}_c{k}", "Convolution", conv_blobs(rng, classes, 2048, 3, gain=0.1)) for k in range(4)]
    return out


# -- Caffe's layers, written out --------------------------------------------------------------------------------------
def _t(blob: np.ndarray) -> Tensor:
    return torch.from_numpy(blob).double()


def conv(x: Tensor, blobs: list[np.ndarray], stride: int = 1, pad: int = 0, dilation: int = 1) -> Tensor:
    return F.conv2d(x, _t(blobs[0]), _t(blobs[1]) if len(blobs) > 1 else None, stride, pad, dilation)


def _pool_size(n: int, k: int, s: int, p: int) -> int:
    out = -(-(n + 2 * p - k) // s) + 1  # Caffe rounds up ...
    return out - 1 if p and (out - 1) * s >= n + p else out  # ... unless the last window starts in the padding


def pool(x: Tensor, kind: str, k: int, s: int, p: int) -> Tensor:
    """Caffe's MAX / AVE pooling; AVE divides by the window clipped to the padded input (``H + pad``)."""
    h, w = x.shape[-2:]
    oh, ow = _pool_size(h, k, s, p), _pool_size(w, k, s, p)
    fill = float("-inf") if kind == "MAX" else 0.0
    padded = F.pad(x, (p, (ow - 1) * s + k - w - p, p, (oh - 1) * s + k - h - p), value=fill)
    win = padded.unfold(2, k, s).unfold(3, k, s)  # (B, C, oh, ow, k, k)
    if kind == "MAX":
        return win.amax((-1, -2))
    ys, xs = torch.arange(oh) * s - p, torch.arange(ow) * s - p
    area = (torch.clamp(ys + k, max=h + p) - ys)[:, None] * (torch.clamp(xs + k, max=w + p) - xs)[None, :]
    return win.sum((-1, -2)) / area


def bn_scale(x: Tensor, bn: list[np.ndarray], scale: list[np.ndarray], eps: float = 1e-5) -> Tensor:
    f = 1 / float(bn[2][0])
    mean, var = _t(bn[0]) * f, _t(bn[1]) * f
    x = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    return x * _t(scale[0]).view(1, -1, 1, 1) + _t(scale[1]).view(1, -1, 1, 1)


def interp_size(n: int, zoom: int = 1, shrink: int = 1) -> int:
    n = (n - 1) // shrink + 1
    return n + (n - 1) * (zoom - 1)


def interp(x: Tensor, oh: int, ow: int) -> Tensor:
    """Caffe's ``Interp`` (caffe_cpu_interp2): source position ``i * (H1 - 1) / (H2 - 1)``, bilinear."""

    def axis(n1: int, n2: int) -> tuple[Tensor, Tensor, Tensor]:
        r = (n1 - 1) / (n2 - 1) if n2 > 1 else 0.0
        pos = torch.arange(n2, dtype=torch.float64) * r
        i0 = pos.floor().long().clamp(max=n1 - 1)
        return i0, torch.where(i0 < n1 - 1, i0 + 1, i0), pos - i0

    (h0, h1, lh), (w0, w1, lw) = axis(x.shape[-2], oh), axis(x.shape[-1], ow)
    top = x[..., h0, :][..., w0] * (1 - lw) + x[..., h0, :][..., w1] * lw
    bottom = x[..., h1, :][..., w0] * (1 - lw) + x[..., h1, :][..., w1] * lw
    return top * (1 - lh)[:, None] + bottom * lh[:, None]


def caffe_input(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 RGB -> Caffe's data blob: BGR, mean pixel subtracted, (1, 3, H, W) float64."""
    bgr = rgb[..., ::-1].astype(np.float64) - np.array(MEAN_BGR)
    return torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None]


# -- the releases' test prototxts -------------------------------------------------------------------------------------
def vgg_trunk(x: Tensor, blobs: dict[str, list[np.ndarray]]) -> Tensor:
    """conv1_1 … pool5: pools 1–3 3x3/2 pad 1, pools 4–5 3x3/1 pad 1, conv5 at dilation 2."""
    for name, _, _ in VGG_CONVS:
        d = 2 if name.startswith("conv5") else 1
        x = F.relu(conv(x, blobs[name], pad=d, dilation=d))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            x = pool(x, "MAX", 3, 1 if name[4] in "45" else 2, 1)
    return x


def largefov_reference(x: Tensor, blobs: dict) -> Tensor:
    """DeepLab-LargeFOV: trunk, pool5a (AVE 3x3/1 pad 1), fc6 (rate 12), fc7, fc8, Interp zoom 8."""
    y = pool(vgg_trunk(x, blobs), "AVE", 3, 1, 1)
    y = F.relu(conv(y, blobs["fc6"], pad=12, dilation=12))
    y = conv(F.relu(conv(y, blobs["fc7"])), blobs["fc8_voc12"])
    return interp(y, interp_size(y.shape[-2], 8), interp_size(y.shape[-1], 8))


def aspp_vgg_reference(x: Tensor, blobs: dict) -> Tensor:
    """DeepLab-v2 VGG16 ASPP-L: four fc6 (rates 6, 12, 18, 24) → fc7 → fc8 branches, Eltwise SUM, Interp zoom 8."""
    t = vgg_trunk(x, blobs)
    y = 0
    for k, r in enumerate((6, 12, 18, 24), 1):
        b = F.relu(conv(F.relu(conv(t, blobs[f"fc6_{k}"], pad=r, dilation=r)), blobs[f"fc7_{k}"]))
        y = y + conv(b, blobs[f"fc8_voc12_{k}"])
    return interp(y, interp_size(y.shape[-2], 8), interp_size(y.shape[-1], 8))


def resnet_fc1(x: Tensor, blobs: dict, tag: str = "_voc12") -> Tensor:
    """ResNet-101 branch to fc1: conv1 7x7/2, pool1 MAX 3x3/2 pad 1, stride on res3a's 1x1s, res4/res5 at rates
    2/4, ASPP fc1_c0…c3 (rates 6, 12, 18, 24) summed."""
    x = F.relu(bn_scale(conv(x, blobs["conv1"], 2, 3), blobs["bn_conv1"], blobs["scale_conv1"]))
    x = pool(x, "MAX", 3, 2, 1)
    for stage, (units, _, s, d) in RESNET_UNITS.items():
        for u in range(units):
            n, su = f"{stage}{unit_name(stage, u)}", s if u == 0 else 1

            def cbs(h: Tensor, b: str, stride: int = 1, pad: int = 0, dil: int = 1, n: str = n) -> Tensor:
                y = conv(h, blobs[f"res{n}_branch{b}"], stride, pad, dil)
                return bn_scale(y, blobs[f"bn{n}_branch{b}"], blobs[f"scale{n}_branch{b}"])

            short = cbs(x, "1", su) if u == 0 else x
            h = F.relu(cbs(x, "2a", su))
            h = F.relu(cbs(h, "2b", 1, d, d))
            x = F.relu(short + cbs(h, "2c"))
    return sum(conv(x, blobs[f"fc1{tag}_c{k}"], pad=r, dilation=r) for k, r in enumerate((6, 12, 18, 24)))


def resnet_msc_reference(x: Tensor, blobs: dict) -> tuple[Tensor, Tensor]:
    """The MSC test prototxt: data_res075 (Interp shrink 4, zoom 3), data_res05 (shrink 2), the shared branch on
    each, fc1_res075 back by shrink 3 / zoom 4 and fc1_res05 by zoom 2, Eltwise MAX, Interp zoom 8.
    Returns (scale-1 output, fused output), both zoomed."""
    h, w = x.shape[-2:]
    fc1 = resnet_fc1(x, blobs)
    x075 = interp(x, interp_size(h, 3, 4), interp_size(w, 3, 4))
    x05 = interp(x, interp_size(h, 1, 2), interp_size(w, 1, 2))
    y075, y05 = resnet_fc1(x075, blobs), resnet_fc1(x05, blobs)
    y075 = interp(y075, interp_size(y075.shape[-2], 4, 3), interp_size(y075.shape[-1], 4, 3))
    y05 = interp(y05, interp_size(y05.shape[-2], 2), interp_size(y05.shape[-1], 2))
    assert y075.shape == y05.shape == fc1.shape, "the release's MSC needs sizes that line up"
    fused = torch.maximum(fc1, torch.maximum(y075, y05))

    def zoom(y: Tensor) -> Tensor:
        return interp(y, interp_size(y.shape[-2], 8), interp_size(y.shape[-1], 8))

    return zoom(fc1), zoom(fused)
