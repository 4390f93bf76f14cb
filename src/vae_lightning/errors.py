"""The errors whose message is the whole story for a user: shown as one line, no traceback."""

from typing import Any


class UserError(Exception):
    """An error the user can fix from its message alone (see cli.exit_on_config_error)."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value that cannot work."""

    exit_code = 2

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
