"""The console callbacks that train.py adds."""

import sys

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from omegaconf import OmegaConf

from vae_lightning.callbacks import EpochLog, NoLiveBar, console_callbacks
from vae_lightning.file_only import FILE_ONLY


def test_console_callbacks_follow_the_trainer_switches_and_the_terminal(monkeypatch):
    both = OmegaConf.create({"enable_progress_bar": True, "enable_model_summary": True})
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    bar, epoch_log, summary = console_callbacks(both)
    assert isinstance(bar, NoLiveBar) and isinstance(summary, RichModelSummary)
    assert isinstance(epoch_log, EpochLog) and epoch_log.extra == {}  # console and file
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    bar, epoch_log, _ = console_callbacks(both)
    assert isinstance(bar, RichProgressBar) and epoch_log.extra == FILE_ONLY  # the bar shows it
    off = OmegaConf.create({"enable_progress_bar": False, "enable_model_summary": False})
    assert console_callbacks(off) == []
