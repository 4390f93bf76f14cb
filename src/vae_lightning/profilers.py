"""The Trainer's profiler when nothing is profiled."""

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler


class NoProfiler(PassThroughProfiler):
    """Profiles nothing, at no cost per hook.

    Lightning wraps every hook call in `profiler.profile(name)`, dozens of times a training step.
    Its default PassThroughProfiler does nothing inside, but its `profile` is a generator-based
    context manager, built, entered and left each time, a visible share of a small model's step
    on a CPU (benchmarks/README.md). This one hands back one shared no-op context instead.
    """

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._nothing
