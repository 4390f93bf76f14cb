"""The Hydra callbacks the configs register (conf/hydra/default.yaml, conf/hparams_search/):
Hydra builds them as it starts, before any job runs, so this module imports nothing heavy and
each callback imports what it needs when it is called. Otherwise torch, Lightning and
matplotlib would load while Hydra sets up, and a run's `imports` phase (phases.py) would be
counted as `config`."""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    """Write the report of sweep.py into the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from vae_lightning.sweep import write_report_once

        write_report_once(Path(config.hydra.sweep.dir))


class OptunaThroughHydraLogging(Callback):
    """`hparams_search=optuna`: Optuna's messages go through Hydra's logging (its format, its
    handlers), not Optuna's own handler, whose colour codes would end up in any file the output
    is sent to."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import optuna  # only a sweep with the Optuna sweeper has it

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
