"""Summarise the networks: ``python -m deeplab_lit.nets`` prints parameters and output shapes per generation."""

from __future__ import annotations

import torch

from . import build_net, count_parameters

CONFIGS = [
    ("v1", {"backbone": "vgg16"}),
    ("v1", {"backbone": "vgg16", "msc_features": True}),
    ("v2", {"backbone": "vgg16"}),
    ("v2", {"backbone": "resnet101"}),
    ("v3", {"backbone": "resnet101"}),
    ("v3", {"backbone": "resnet101", "cascade_blocks": 3}),
    ("v3plus", {"backbone": "xception65"}),
    ("v3plus", {"backbone": "resnet101", "multi_grid": (1, 2, 4)}),
    ("v3plus", {"backbone": "mobilenet_v2"}),
]


def main() -> None:
    x = torch.randn(1, 3, 129, 129)
    print(f"{'generation':<8} {'backbone':<13} {'options':<24} {'params':>9}  OS  logits")
    for generation, kwargs in CONFIGS:
        net = build_net(generation, 21, **kwargs).eval()
        with torch.no_grad():
            out = net(x)["out"]
        options = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "backbone")
        print(
            f"{generation:<8} {kwargs['backbone']:<13} {options:<24} {count_parameters(net) / 1e6:8.2f}M "
            f"{net.output_stride:3d}  {tuple(out.shape)}"
        )


if __name__ == "__main__":
    main()
