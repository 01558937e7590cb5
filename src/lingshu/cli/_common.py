"""Helpers shared by the subcommands: clean error reporting and argument parsing."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

# Errors that come from bad input: shown as one clear line, not a traceback.
# OSError covers missing files, unwritable output folders and full disks.
USER_ERRORS = (ValueError, OSError, KeyError, ImportError)


def user_errors_as_messages(command: Callable) -> Callable:
    """Decorate a CLI command so that input errors print ``error: ...`` and exit with code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            typer.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` (as in ``--condition cell_type=B``) with a clear error otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"expected KEY=LABEL, got {text!r} (e.g. --condition cell_type=B)")
    return key.strip(), value.strip()
