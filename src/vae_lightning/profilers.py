"""The Trainer's profiler when nothing is profiled."""

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler


class NoProfiler(PassThroughProfiler):
    """Profiles nothing, at no cost per hook.

    Lightning wraps every hook call in `profiler.profile(name)`: about 90 calls a training step
    with this project's callbacks. Its default PassThroughProfiler does nothing inside, but its
    `profile` is a generator-based context manager, built, entered and left on each of those
    calls: 660 Python calls a step, ~2% of a step of pytorch/examples' MLP on a 2-core CPU
    (benchmarks/README.md). This one hands back one shared no-op context instead.
    """

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._nothing
