"""The commands: `vae-train`, `vae-eval`, `vae-sample` and `vae-export` once the package is
installed, and train.py, eval.py, sample.py and export.py at the top of a checkout. Each checks its
command line, parses its Hydra config (conf/, shipped in the package as vae_lightning.conf) and
calls one function.

Torch and Lightning are imported by each job, not here: importing them takes seconds, and a
command line refused before Hydra starts is answered without them."""

import functools
import logging
import shutil
import sys
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import vae_lightning
from vae_lightning.config import (
    check_command_config,
    check_group_choices,
    check_override_keys,
    compose_command_line,
    group_choices_by_dotted_key,
    is_multirun,
    optimized_value,
    parse_hydra_arguments,
)
from vae_lightning.errors import ConfigError, UserError, exit_on_config_error
from vae_lightning.phases import startup_phases

CONFIG_DIR = Path(str(files("vae_lightning.conf")))
CONFIG_PATH = "pkg://vae_lightning.conf"
IMPORTS_DONE_AT = time.perf_counter()

log = logging.getLogger(__name__)

# The folders Hydra is to create for this process's run directory, the run directory first
# (prepare_command_line): what a job refused inside removes again (_refusal_writes_nothing).
_new_folders: list[Path] = []


def resume_arguments(argv: list[str]) -> list[str]:
    """Expand `resume=<run dir>` into the arguments that continue that run in its directory.

    The run's own saved config (`.hydra/config.yaml`) is composed instead of conf/, so nothing
    has to be typed again; other arguments still apply (e.g. `trainer.max_epochs=20`).
    """
    resume = [arg for arg in argv if arg.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(resume[-1].removeprefix("resume=")).resolve()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ConfigError("resume", str(run_dir), "a run directory holding .hydra/config.yaml")
    if not checkpoint.is_file():
        raise ConfigError("resume", str(run_dir), "a run that saved checkpoints/last.ckpt")
    return [
        *("--config-dir", str(run_dir / ".hydra"), "--config-name", "config"),
        f"hydra.run.dir='{run_dir}'",
        f"ckpt_path='{checkpoint}'",
        *(arg for arg in argv if not arg.startswith("resume=")),
    ]


@exit_on_config_error
def prepare_command_line(config_dir: str | Path, config_name: str, argv: list[str]) -> list[str]:
    """The arguments for Hydra, checked before Hydra starts, since Hydra creates the run directory
    before any job runs: `resume=<run dir>` expanded, nested groups chosen with a dot
    (`model.objective=iwae`), unknown group options and keys refused, all of Lightning's Trainer
    arguments accepted as trainer.X=..., the composed config's values checked
    (config.check_command_config). A single run's new run directory is named here, once
    (hydra.run.dir), so that a job refused later knows which folders it may remove."""
    argv = group_choices_by_dotted_key(config_dir, resume_arguments(argv))
    check_group_choices(config_dir, argv)
    argv = check_override_keys(config_dir, config_name, argv)
    cfg = compose_command_line(config_dir, config_name, argv)
    if cfg is None:
        return argv
    try:
        check_command_config(config_name, cfg, argv)
        run_dir = Path(cfg.hydra.run.dir).absolute()  # ${now:...} resolved here, once
    except OmegaConfBaseException:  # an interpolation known only inside Hydra's job
        return argv
    new_folders = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    if is_multirun(cfg, argv) or not new_folders:
        return argv
    _new_folders[:] = new_folders
    # after the last override, as Hydra's parser takes them all in one run of its arguments
    overrides = parse_hydra_arguments(argv).overrides
    end = len(argv) - argv[::-1].index(overrides[-1]) if overrides else len(argv)
    return [*argv[:end], f"hydra.run.dir='{run_dir}'", *argv[end:]]


def _refusal_writes_nothing(job: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """A single run refused inside its job (exit status 2: a config found not to work, e.g. a
    checkpoint that does not load) before it wrote anything of its own removes the run directory
    Hydra created for it, and the folders above it that Hydra created and that stay empty. A run
    directory that was there before (resume=), or that holds more than Hydra's files and the log
    (an interrupted or failed training), is left as it is."""

    @functools.wraps(job)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return job(cfg)
        except UserError as error:
            if error.exit_code == 2 and _new_folders and HydraConfig.get().mode == RunMode.RUN:
                _remove_new_run_dir(*_new_folders)
            raise

    return wrapper


def _remove_new_run_dir(run_dir: Path, *above: Path) -> None:
    if not run_dir.is_dir():
        return
    if not all(path.name == ".hydra" or path.suffix == ".log" for path in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    for folder in above:
        if any(folder.iterdir()):  # another run may have started in it since
            break
        folder.rmdir()


def _announce_run(cfg: DictConfig) -> None:
    """The run directory, first thing in the log; with print_config=true the composed config."""
    log.info("run directory: %s", Path(HydraConfig.get().runtime.output_dir).absolute())
    if cfg.get("print_config"):
        log.info("config (print_config=true):\n%s", OmegaConf.to_yaml(cfg, resolve=True))


def _import_seconds(job_imports_started_at: float) -> float:
    """This process's seconds of imports: the command's own and those of its job until now."""
    own = IMPORTS_DONE_AT - vae_lightning.IMPORTED_AT
    return own + time.perf_counter() - job_imports_started_at


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@exit_on_config_error
@_refusal_writes_nothing
def _train(cfg: DictConfig) -> float | None:
    started = time.perf_counter()
    from vae_lightning.cli import train
    from vae_lightning.sweep import record_failure_in_multirun

    startup = startup_phases(_import_seconds(started))
    _announce_run(cfg)

    @record_failure_in_multirun
    def job(cfg: DictConfig) -> float | None:
        return optimized_value(cfg, train(cfg, startup))

    return job(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@exit_on_config_error
@_refusal_writes_nothing
def _evaluate(cfg: DictConfig) -> None:
    from vae_lightning.cli import evaluate

    _announce_run(cfg)
    evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
@exit_on_config_error
def _sample(cfg: DictConfig) -> None:
    from vae_lightning.sampling import sample

    sample(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
@exit_on_config_error
def _export(cfg: DictConfig) -> None:
    from vae_lightning.export import export

    export(cfg)


def _run(config_name: str, main: Callable[[], None]) -> None:
    sys.argv[1:] = prepare_command_line(CONFIG_DIR, config_name, sys.argv[1:])
    main()


def train_command() -> None:
    """Train a VAE: `vae-train [group=option ...] [key=value ...]`; see conf/train.yaml."""
    _run("train", _train)


def eval_command() -> None:
    """Evaluate a checkpoint: `vae-eval ckpt_path=PATH [data=NAME] [eval.iwae_k=K]`."""
    _run("eval", _evaluate)


def sample_command() -> None:
    """Draw images from a checkpoint: `vae-sample ckpt_path=PATH mode=prior|traverse|...`."""
    _run("sample", _sample)


def export_command() -> None:
    """Write a checkpoint as a folder to share: `vae-export ckpt_path=PATH out=DIR`."""
    _run("export", _export)
