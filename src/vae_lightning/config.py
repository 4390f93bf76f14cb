"""Config checks at the point where a config enters, each failure one line naming key and fix."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra import initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from vae_lightning.elbo import LIKELIHOODS, SIGMA_PER
from vae_lightning.module import VAE
from vae_lightning.networks import NETWORKS, conv_downsampling


class UserError(Exception):
    """An error whose message is the whole story: shown as one line, no traceback (see cli)."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value that cannot work."""

    exit_code = 2

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _positive_ints(value: Any) -> bool:
    return OmegaConf.is_list(value) and len(value) > 0 and all(map(_positive_int, value))


# (key, test, what is allowed); a key missing from the config is not checked.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.latent_dim", _positive_int, "a positive integer, e.g. model.latent_dim=16"),
    ("model.beta", lambda v: _is_number(v) and v >= 0, "a number >= 0, e.g. model.beta=1"),
    ("model.likelihood", lambda v: v in LIKELIHOODS, f"one of {', '.join(LIKELIHOODS)}"),
    ("model.network", lambda v: v in NETWORKS, f"one of {', '.join(NETWORKS)}"),
    ("model.hidden_dims", _positive_ints, "a non-empty list of positive integers, e.g. [32,64]"),
    ("model.dense_dim", _positive_int, "a positive integer, e.g. model.dense_dim=256"),
    ("model.gaussian_sigma", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. 0.1"),
    ("model.gaussian_sigma_per", lambda v: v in SIGMA_PER, f"one of {', '.join(SIGMA_PER)}"),
    ("model.kl_warmup", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no warm-up)"),
    ("model.kl_warmup_unit", lambda v: v in ("steps", "epochs"), "one of steps, epochs"),
    ("model.free_bits", lambda v: _is_number(v) and v >= 0, "a number >= 0 of nats, e.g. 0.5"),
    ("model.compile", lambda v: isinstance(v, bool), "true or false"),
    ("model.channels_last", lambda v: isinstance(v, bool), "true or false"),
    ("model.gradient_clip_val", lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    (
        "trainer.gradient_clip_val",
        lambda v: v == 0,
        "the VAE steps its optimiser itself; clip with model.gradient_clip_val=1.0 instead",
    ),
    (
        "trainer.accumulate_grad_batches",
        lambda v: v == 1,
        "the VAE steps its optimiser every batch; raise data.batch_size instead",
    ),
    ("model.optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    ("data.batch_size", _positive_int, "a positive integer, e.g. data.batch_size=128"),
    ("data.image_size", _positive_int, "a positive integer, e.g. data.image_size=32"),
    ("data.channels", lambda v: v in (1, 3), "1 (grey) or 3 (RGB)"),
    ("data.binarize", lambda v: v == "dynamic", "dynamic, or null for grey values"),
    ("data.val_fraction", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1), e.g. 0.1"),
    ("data.size", _positive_int, "a positive integer, or null for all images"),
    ("trainer.max_epochs", _is_int, "an integer (-1 for no limit), e.g. trainer.max_epochs=10"),
    ("eval.iwae_k", _positive_int, "a positive integer of importance samples, e.g. 1000"),
    ("eval.max_rows", _positive_int, "a positive integer of decoder rows per pass, e.g. 8192"),
    ("callbacks.nonfinite.on_nonfinite", lambda v: v in ("stop", "skip"), "stop or skip"),
    (
        "callbacks.step_checkpoint.every_n_train_steps",
        _positive_int,
        "a positive integer, e.g. callbacks.step_checkpoint.every_n_train_steps=50",
    ),
]

# The model hyperparameters that fix the shapes of the weights in a checkpoint.
SHAPE_HPARAMS = ("network", "latent_dim", "hidden_dims", "dense_dim")

SAMPLE_MODES = ("prior", "traverse", "interpolate", "reconstruct")

# The rules of sample.py's config (conf/sample.yaml).
SAMPLE_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("mode", lambda v: v in SAMPLE_MODES, f"one of {', '.join(SAMPLE_MODES)}"),
    ("n", _positive_int, "a positive integer, e.g. n=64"),
    ("steps", lambda v: _is_int(v) and v >= 2, "an integer >= 2, e.g. steps=9"),
    ("span", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. span=3"),
]


def check_config(cfg: DictConfig, rules: list[tuple[str, Callable, str]] = RULES) -> None:
    """Raise ConfigError for the first value in `cfg` that breaks a rule (train.py's by default)."""
    for key, test, allowed in rules:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not test(value):
            raise ConfigError(key, value, allowed)


def check_image_shape(cfg: DictConfig, image_shape: tuple[int, int, int]) -> None:
    """The conv network halves the image once per hidden layer: the size must allow it."""
    if cfg.model.network != "conv":
        return
    try:
        conv_downsampling(image_shape, len(cfg.model.hidden_dims))
    except ValueError as error:
        raise ConfigError("model.hidden_dims", list(cfg.model.hidden_dims), str(error)) from None


def check_group_choices(config_dir: str | Path, argv: list[str]) -> None:
    """Raise ConfigError for a command-line option of a config group that does not exist.

    Hydra finds an unknown option (`model=foo`) while composing, before any of our code runs,
    and reports it in a dozen lines; this asks Hydra's own config loader for the options of each
    group named on the command line, sweeps (`model=conv,foo`) included, before Hydra starts.
    Anything this does not understand is left for Hydra to report.
    """
    # Hydra's own argument parser, so that flags (-m, --cfg job) are read as Hydra reads them.
    args = get_args_parser().parse_known_args(argv)[0]
    extra = Path(args.config_dir) if args.config_dir else None
    if args.config_path or (extra and extra.is_dir() and any(p.is_dir() for p in extra.iterdir())):
        return  # options may come from groups in other config folders: Hydra knows them
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for override in parsed:
            group, value = override.key_or_group, override.value()
            options = loader.get_group_options(group)
            if not options or override.is_delete():
                continue  # a value such as model.beta, not a group
            for choice in value.list if isinstance(value, ChoiceSweep) else [value]:
                if isinstance(choice, str) and choice not in options:
                    allowed = f"one of {', '.join(options)} (the files in conf/{group}/)"
                    raise ConfigError(group, choice, allowed)


def _plain(value: Any) -> Any:
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else value


def checkpoint_to_resume(cfg: DictConfig, image_shape: tuple[int, int, int]) -> str | None:
    """The checkpoint `ckpt_path` names, checked against the model config; None to start afresh.

    `ckpt_path=last` is this run's `checkpoints/last.ckpt`, or a fresh start when there is none
    yet (as in Lightning), so a scheduler can repeat one command until the run is done.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        checkpoint_dir = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
        last = Path(checkpoint_dir or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
    if ckpt_path is None:
        return None
    allowed = "the path of a .ckpt file written by train.py, last, or null"
    if not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", ckpt_path, f"no such file; {allowed}")
    try:
        # mmap: only the metadata read here is loaded, not the weights.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        hparams = checkpoint["hyper_parameters"]
    except Exception:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError("ckpt_path", ckpt_path, f"not a checkpoint; {allowed}") from None
    keys = [k for k in SHAPE_HPARAMS if k != "dense_dim" or cfg.model.network == "conv"]
    configured = {f"model.{key}": cfg.model.get(key) for key in keys}
    saved = {f"model.{key}": hparams.get(key) for key in keys}
    configured["data.image_shape"] = image_shape
    saved["data.image_shape"] = hparams.get("image_shape")
    for key, value in configured.items():
        if _plain(value) != _plain(saved[key]):
            raise ConfigError(
                key, _plain(value), f"the checkpoint {ckpt_path} has {key}={_plain(saved[key])}"
            )
    return ckpt_path


def run_dir_of(ckpt_path: str | Path) -> Path:
    """train.py keeps checkpoints in `<run dir>/checkpoints/`."""
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_checkpoint_model(ckpt_path: str | None) -> VAE:
    """The VAE of a checkpoint, rebuilt from its own hparams alone, on the CPU, in eval mode;
    a ConfigError if the file is missing or not a checkpoint of train.py."""
    allowed = "a checkpoint of train.py, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt"
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", ckpt_path, f"{allowed} (no such file)")
    try:
        model = VAE.load_from_checkpoint(ckpt_path, map_location="cpu")
    except Exception as error:  # whatever the file holds instead, the fix is another ckpt_path
        reason = f"{type(error).__name__} on loading"
        raise ConfigError("ckpt_path", ckpt_path, f"{allowed} ({reason})") from None
    return model.eval()


def run_data_config(ckpt_path: str | Path, needed_by: str) -> DictConfig:
    """The data config of the run that wrote a checkpoint, from `<run dir>/.hydra/config.yaml`,
    with data paths taken from where that run was started (its `.hydra/hydra.yaml`)."""
    run_dir = run_dir_of(ckpt_path)
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            "ckpt_path",
            str(ckpt_path),
            f"{needed_by} needs the run's data: a checkpoint in <run dir>/checkpoints/ with "
            f"<run dir>/.hydra/config.yaml beside it (not found: {saved}), or name the data, "
            "e.g. data=shapes",
        )
    run_cfg = OmegaConf.load(saved)
    hydra_cfg = run_dir / ".hydra" / "hydra.yaml"
    if hydra_cfg.is_file():
        run_cfg.paths.root_dir = OmegaConf.load(hydra_cfg).hydra.runtime.cwd
    return run_cfg.data
