"""deeplab_lit: DeepLab V1, V2, V3 and V3+ on PyTorch Lightning."""

__version__ = "0.1.0"
