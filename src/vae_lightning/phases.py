"""Where a run's wall time goes: seconds per phase (imports, config, data, model, epochs,
pictures, test, evaluation), printed at the end of a run and kept in metrics.json as `phases_s`.

Timed around the run's own calls, and by the pictures callback around its drawing: no callback
of its own, since Lightning calls every hook of every callback at every training step."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import vae_lightning

_startup_reported = False


def startup_phases(import_seconds: float) -> dict[str, float]:
    """The seconds before a run's own work, for the first run of a process ({} for the later
    runs of a multirun): `imports`, the seconds spent importing, and `config`, the rest since the
    package's first import (the first line of train.py): checking the command line and Hydra
    composing the config."""
    global _startup_reported
    if _startup_reported:
        return {}
    _startup_reported = True
    elapsed = time.perf_counter() - vae_lightning.IMPORTED_AT
    return {"imports": import_seconds, "config": elapsed - import_seconds}


class Phases:
    """Wall seconds of named phases, in the order they began; a phase timed twice adds up."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = dict(seconds or {})

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def split_off(self, part: str, seconds: float, whole: str) -> None:
        """Count `seconds` of phase `whole` as phase `part` instead (e.g. pictures out of fit)."""
        self.seconds[whole] -= seconds
        self.add(part, seconds)

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}

    def summary(self) -> str:
        total = sum(self.seconds.values())
        return ", ".join(
            f"{name} {seconds:.1f} s ({seconds / total:.0%})"
            for name, seconds in self.seconds.items()
        )
