"""Weights & Biases: online when the user is logged in, offline otherwise, never a crash for a missing account."""

from __future__ import annotations

import netrc
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _WandbLogger


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc (where ``wandb login`` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger with ``offline=None`` meaning: online if logged in, else offline.

    ``WANDB_MODE`` (``offline``/``disabled``) still overrides, as wandb documents.
    """

    def __init__(self, *args: Any, offline: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, offline=not wandb_logged_in() if offline is None else offline, **kwargs)
