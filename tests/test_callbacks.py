"""The console callbacks that train.py adds."""

import sys

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from omegaconf import OmegaConf

from vae_lightning.callbacks import EpochLog, console_callbacks


def test_console_callbacks_follow_the_trainer_switches_and_the_terminal(monkeypatch):
    both = OmegaConf.create({"enable_progress_bar": True, "enable_model_summary": True})
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    bar, summary = console_callbacks(both)
    assert isinstance(bar, EpochLog) and isinstance(summary, RichModelSummary)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(console_callbacks(both)[0], RichProgressBar)
    off = OmegaConf.create({"enable_progress_bar": False, "enable_model_summary": False})
    assert console_callbacks(off) == []
