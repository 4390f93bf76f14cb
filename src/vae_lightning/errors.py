"""The errors whose message is the whole story for a user: shown as one line, no traceback."""

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hydra.errors import InstantiationException


class UserError(Exception):
    """An error the user can fix from its message alone (see exit_on_config_error)."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value that cannot work."""

    exit_code = 2

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class UnknownKeyError(UserError):
    """A key on the command line that the config does not have (a typo, most often)."""

    exit_code = 2


class UnreadableImageError(UserError):
    """An image folder with a file that cannot be decoded (data.unreadable=stop), or with none
    that can: one line naming the file, exit status 2 as for a config that cannot work."""

    exit_code = 2


def exit_on_config_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ConfigError (any UserError) into one line on stderr and its exit status (2 for a
    config), instead of a traceback; HYDRA_FULL_ERROR=1 keeps the traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)

    return wrapper


@contextlib.contextmanager
def user_errors_of_instantiation() -> Iterator[None]:
    """Raise a UserError that a constructor called by Hydra's `instantiate` raised as itself:
    instantiate wraps it in an InstantiationException once per level of nesting (the model's
    objective inside the model), and a part that checks its own arguments is to be answered in
    one line all the same."""
    try:
        yield
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise
