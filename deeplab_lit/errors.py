"""The project's error types for what a user can get wrong.

The CLI turns a :class:`UserError` into a short message (exit status 1, no traceback unless ``--debug`` or
``DEEPLAB_LIT_DEBUG=1``) through :func:`reported`; any other exception keeps its traceback. Each is also a
``ValueError``, so callers of the Python API can catch them as before.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError, ArgumentParser
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """An expected user error: the message names the file or argument, the value and, where there is one, the fix."""


class DataError(UserError):
    """A dataset file or layout problem, raised before training with the file named."""


class ConfigError(UserError):
    """An argument value that cannot work (a backbone name, an output stride, a CRF weight, ...)."""


class CheckpointError(UserError):
    """A checkpoint or weights file that is missing, not a checkpoint, truncated or of another model."""


DEBUG_ENV = "DEEPLAB_LIT_DEBUG"


class ShortArgumentParser(ArgumentParser):
    """``argparse`` whose usage errors end with exit status 1, as every other user error (argparse's own is 2)."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {message} (--help lists the options)\n")


def find_user_error(err: BaseException | None) -> UserError | None:
    """The ``UserError`` behind ``err``: itself, or one it was raised from (jsonargparse wraps the errors of the
    classes it instantiates)."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


def user_message(err: UserError) -> str:
    """The error's own message. PyTorch re-raises a DataLoader worker's error as the same type with the worker's
    traceback as its message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep only
    the original message, the traceback's last entry."""
    text = str(err)
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        text = text[text.rfind(marker) + len(marker) :]
    return text.strip()


def _argument_message(err: ArgumentError) -> str:
    # jsonargparse ends a message with the given value, for --model the whole namespace of the model's arguments
    lines = [
        line
        for line in str(err).splitlines()
        if line.strip() and not line.lstrip().startswith(("Given value", "Subtypes:"))
    ]
    return "\n".join(lines) + "\n(--help lists the options)"


@contextmanager
def reported(debug: bool = False) -> Iterator[None]:
    """Report a ``UserError`` (or a command-line argument error) as ``error: <message>`` on stderr and exit with
    status 1, without a traceback; any other exception keeps its traceback. ``debug`` (``--debug``) or
    ``DEEPLAB_LIT_DEBUG=1`` keep every traceback."""
    try:
        yield
    except Exception as err:
        user = find_user_error(err)
        if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0") or not (user or isinstance(err, ArgumentError)):
            raise
        print(f"error: {user_message(user) if user else _argument_message(err)}", file=sys.stderr)
        raise SystemExit(1) from None
