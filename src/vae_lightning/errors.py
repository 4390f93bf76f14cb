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


class UnknownKeyError(UserError):
    """A key on the command line that the config does not have (a typo, most often)."""

    exit_code = 2


class UnreadableImageError(UserError):
    """An image folder with a file that cannot be decoded (data.unreadable=stop), or with none
    that can: one line naming the file, exit status 2 as for a config that cannot work."""

    exit_code = 2
