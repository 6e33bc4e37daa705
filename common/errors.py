"""The error a user can fix: the CLI prints its message as one line and exits with code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input (config, arguments, data paths): reported as one line, never a traceback."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for entry points: a UserError becomes 'error: <message>' on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)
