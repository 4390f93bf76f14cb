"""Loggers as the logger configs build them, where Lightning's own need a default changed."""

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def has_wandb_login() -> bool:
    """Whether W&B would find credentials: an API key or identity token in the environment, or
    an entry for its host in the netrc file that `wandb login` writes. W&B's own lookup is
    private (wandb.sdk.lib.wbauth) and `wandb.login` prompts or raises instead of answering."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, **kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger, offline when there is no W&B login and WANDB_MODE is unset.

    Without a login W&B would stop the run with a traceback from wandb.login, or wait at a
    prompt; an offline run loses nothing and uploads later with `wandb sync`, which is what a
    user who picked logger=wandb wants. WANDB_MODE (online, offline, disabled) always wins."""
    if not os.environ.get("WANDB_MODE") and not kwargs.get("offline") and not has_wandb_login():
        kwargs["offline"] = True
        log.warning(
            "logger=wandb: no W&B login (WANDB_API_KEY or `wandb login`), so this run is logged "
            "offline in %s/wandb; upload it later with `wandb sync %s/wandb/offline-run-*`",
            save_dir,
            save_dir,
        )
    logger = WandbLogger(save_dir=save_dir, **kwargs)
    # Lightning hands wandb.init `anonymous=None`, which wandb (0.19 on) warns has no effect, and
    # has no argument to leave it out.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger
