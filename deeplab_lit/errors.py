"""The project's error types for what a user can get wrong.

The CLI turns a :class:`UserError` into a short message (exit status 1, no traceback unless ``--debug``);
any other exception keeps its traceback. Each is also a ``ValueError``, so callers of the Python API can catch
them as before.
"""

from __future__ import annotations


class UserError(ValueError):
    """An expected user error: the message names the file or argument, the value and, where there is one, the fix."""


class DataError(UserError):
    """A dataset file or layout problem, raised before training with the file named."""


class ConfigError(UserError):
    """An argument value that cannot work (a backbone name, an output stride, a CRF weight, ...)."""


class CheckpointError(UserError):
    """A checkpoint or weights file that is missing, not a checkpoint, truncated or of another model."""
