"""Config checks at the point where a config enters, each failure one line naming key and fix."""

import argparse
import ast
import difflib
import functools
import importlib.util
import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vae_lightning.checks import is_int, is_number, non_negative, positive_int
from vae_lightning.errors import ConfigError, UnknownKeyError, UserError
from vae_lightning.legacy import MOVED
from vae_lightning.options import DCI_REGRESSORS, METRICS, UNREADABLE

SEED_RULE = ("seed", is_int, "an integer, e.g. seed=0")

# (key, test, what is allowed); a key missing from the config is not checked.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    SEED_RULE,
    ("print_config", lambda v: isinstance(v, bool), "true or false"),
    ("model.latent_dim", positive_int, "a positive integer, e.g. model.latent_dim=16"),
    ("model.beta", lambda v: is_number(v) and v >= 0, "a number >= 0, e.g. model.beta=1"),
    ("model.kl_warmup", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: no warm-up)"),
    ("model.kl_warmup_unit", lambda v: v in ("steps", "epochs"), "one of steps, epochs"),
    ("model.free_bits", lambda v: is_number(v) and v >= 0, "a number >= 0 of nats, e.g. 0.5"),
    ("model.compile", lambda v: isinstance(v, bool), "true or false"),
    ("model.channels_last", lambda v: isinstance(v, bool), "true or false"),
    ("model.grad_skip_threshold", non_negative, "a number >= 0 (0: off), e.g. 400"),
    ("trainer.gradient_clip_val", lambda v: is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    ("trainer.accumulate_grad_batches", positive_int, "a positive integer of batches, e.g. 4"),
    ("model.optimizer.lr", lambda v: is_number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    ("data.batch_size", positive_int, "a positive integer, e.g. data.batch_size=128"),
    ("data.image_size", positive_int, "a positive integer, e.g. data.image_size=32"),
    ("data.channels", lambda v: v in (1, 3), "1 (grey) or 3 (RGB)"),
    ("data.binarize", lambda v: v == "dynamic", "dynamic, or null for grey values"),
    ("data.val_fraction", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.1"),
    ("data.size", positive_int, "a positive integer, or null for all images"),
    ("data.unreadable", lambda v: v in UNREADABLE, f"one of {', '.join(UNREADABLE)}"),
    ("data.labelled", positive_int, "a positive integer of labels, or null for every label"),
    ("torch_threads", positive_int, "a positive integer of threads, or null for one per core"),
    ("trainer.max_epochs", is_int, "an integer (-1 for no limit), e.g. trainer.max_epochs=10"),
    ("eval.iwae_k", positive_int, "a positive integer of importance samples, e.g. 1000"),
    (
        "eval.limit_test_batches",
        lambda v: is_number(v) and v > 0,
        "a fraction of the test batches in (0, 1], or their number, e.g. 10",
    ),
    (
        "eval.disentanglement.metrics",
        lambda v: OmegaConf.is_list(v) and all(name in METRICS for name in v),
        f"a list of {', '.join(METRICS)}, e.g. [mig,dci]",
    ),
    *(
        (f"eval.disentanglement.{key}", positive_int, "a positive integer, e.g. 1000")
        for key in ("batch_size", "n_train", "n_eval")
    ),
    (
        "eval.disentanglement.dci_regressor",
        lambda v: v in DCI_REGRESSORS,
        f"one of {', '.join(DCI_REGRESSORS)}",
    ),
    ("model.condition", lambda v: v == "label", "null or label (the data's classes)"),
    ("eval.max_rows", positive_int, "a positive integer of decoder rows per pass, e.g. 8192"),
    ("eval.iwae_images", positive_int, "a positive integer, or null for every test image"),
    (
        "eval.samples",
        lambda v: OmegaConf.is_dict(v),
        "the sample metrics' settings (conf/samples/default.yaml), or null for none",
    ),
    # precision/recall needs more images than its k = 3 nearest neighbours
    ("eval.samples.n", lambda v: is_int(v) and v >= 4, "an integer >= 4 of samples, e.g. 10000"),
    ("eval.samples.batch_size", positive_int, "a positive integer of images, e.g. 500"),
    ("eval.samples.seed", is_int, "an integer, e.g. 0"),
    ("eval.samples.gmm_components", positive_int, "a positive integer, e.g. 10"),
    (
        "eval.conditional_samples",
        positive_int,
        "a positive integer of samples per class, or null for no conditional accuracy",
    ),
    ("callbacks.nonfinite.on_nonfinite", lambda v: v in ("stop", "skip"), "stop or skip"),
    (
        "callbacks.nonfinite.every_n_steps",
        positive_int,
        "a positive integer, or null for trainer.log_every_n_steps",
    ),
    (
        "callbacks.step_checkpoint.every_n_train_steps",
        positive_int,
        "a positive integer, e.g. callbacks.step_checkpoint.every_n_train_steps=50",
    ),
]

SAMPLE_MODES = ("prior", "traverse", "interpolate", "reconstruct")

# The rules of sample.py's config (conf/sample.yaml).
SAMPLE_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("mode", lambda v: v in SAMPLE_MODES, f"one of {', '.join(SAMPLE_MODES)}"),
    ("sampler", lambda v: v in ("prior", "gmm"), "prior or gmm"),
    ("gmm_components", positive_int, "a positive integer, e.g. gmm_components=10"),
    ("n", positive_int, "a positive integer, e.g. n=64"),
    ("steps", lambda v: is_int(v) and v >= 2, "an integer >= 2, e.g. steps=9"),
    ("span", lambda v: is_number(v) and v > 0, "a number > 0, e.g. span=3"),
    ("temperature", lambda v: is_number(v) and v > 0, "a number > 0, e.g. temperature=0.7"),
    SEED_RULE,
]

# The rules of export.py's config (conf/export.yaml).
EXPORT_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("n_images", positive_int, "a positive integer, e.g. n_images=32"),
    SEED_RULE,
]

CHECKPOINT_EXAMPLE = "ckpt_path=<run dir>/checkpoints/last.ckpt"

# The keys each command cannot run without, with an example of each.
REQUIRED: dict[str, dict[str, str]] = {
    "eval": {"ckpt_path": CHECKPOINT_EXAMPLE},
    "sample": {"ckpt_path": CHECKPOINT_EXAMPLE},
    "export": {"ckpt_path": CHECKPOINT_EXAMPLE, "out": "out=shared/my-vae (a new folder)"},
}


# (key, test of the whole config, what is allowed): parts that only work together.
def _part(cfg: DictConfig, part: str) -> str:
    """The class name a part's config names (its _target_'s last component)."""
    return str(OmegaConf.select(cfg, f"model.{part}._target_")).rpartition(".")[2]


# The objectives that read a single layer's posterior (mu, logvar, z) or its KL's decomposition,
# and those that read mu and logvar as q itself (a flow's base Gaussian is not q).
SINGLE_LAYER_OBJECTIVES = ("BetaTC", "FactorVAE", "DIPVAE", "MMD")
GAUSSIAN_POSTERIOR_OBJECTIVES = ("BetaTC", "DIPVAE")


def _hierarchical(cfg: DictConfig) -> bool:
    return _part(cfg, "network") == "HierarchicalNetwork"


# The networks that feed a condition to their encoder and decoder (n_classes).
CONDITIONED_NETWORKS = ("ConvNetwork", "MLPNetwork")

# The priors over code maps, and the posterior that gives code maps (model=vqvae).
CODE_PRIORS = ("UniformCodes", "GatedPixelCNN")


def _vector_quantized(cfg: DictConfig) -> bool:
    return _part(cfg, "posterior") == "VectorQuantizer"


COMBINATION_RULES: list[tuple[str, Callable[[DictConfig], bool], str]] = [
    (
        "model.objective",
        lambda cfg: (
            not _hierarchical(cfg) or _part(cfg, "objective") not in SINGLE_LAYER_OBJECTIVES
        ),
        "elbo, iwae or capacity with model=hierarchical: the others read one layer's posterior",
    ),
    (
        "model.objective",
        lambda cfg: (
            _part(cfg, "posterior") == "DiagonalGaussian"
            or _part(cfg, "objective") not in GAUSSIAN_POSTERIOR_OBJECTIVES
        ),
        "not beta_tc or dip with a flow posterior: they read mu and logvar as q(z|x) itself",
    ),
    (
        "model.prior",
        lambda cfg: not _hierarchical(cfg) or _part(cfg, "prior") == "StandardPrior",
        "standard with model=hierarchical: the top layer's prior is N(0, I)",
    ),
    (
        "model.posterior",
        lambda cfg: not _hierarchical(cfg) or _part(cfg, "posterior") == "DiagonalGaussian",
        "gaussian with model=hierarchical: its layers' posteriors are its own Gaussians",
    ),
    (
        "model.condition",
        lambda cfg: not cfg.model.get("condition") or _part(cfg, "network") in CONDITIONED_NETWORKS,
        "null with this network (the hierarchy, a VQ-VAE's code map): only the one-layer "
        "networks (conv, mlp) take a condition",
    ),
    (
        "model.condition",
        lambda cfg: not cfg.model.get("condition") or _part(cfg, "prior") != "VampPrior",
        "null with model.prior=vamp: its pseudo-inputs have no class to encode them with",
    ),
    (
        "model.free_bits",
        lambda cfg: (
            not cfg.model.get("free_bits")
            or (_part(cfg, "prior"), _part(cfg, "posterior"))
            == ("StandardPrior", "DiagonalGaussian")
        ),
        "0 unless the prior is standard and the posterior gaussian: only then does the KL split "
        "into dimensions",
    ),
    (
        "model.prior",
        lambda cfg: _part(cfg, "prior") == "StandardPrior" or _part(cfg, "objective") != "BetaTC",
        "standard with model.objective=beta_tc: its KL decomposition assumes N(0, I)",
    ),
    (
        "model.network",
        lambda cfg: _vector_quantized(cfg) == (_part(cfg, "network") == "ConvMapNetwork"),
        "conv_map with model.posterior=vq, and only then: the quantiser reads a map of code "
        "vectors (model=vqvae)",
    ),
    (
        "model.prior",
        lambda cfg: _vector_quantized(cfg) == (_part(cfg, "prior") in CODE_PRIORS),
        "uniform_codes or pixelcnn with model.posterior=vq, and only then: a prior over code maps",
    ),
    (
        "model.objective",
        lambda cfg: not _vector_quantized(cfg) or _part(cfg, "objective") == "ELBO",
        "elbo with model=vqvae: its loss is recon + commitment, q(z|x) has no draws to weigh and "
        "no Gaussian to regularise",
    ),
    (
        "model.first_stage",
        lambda cfg: (_part(cfg, "prior") == "GatedPixelCNN") == bool(cfg.model.get("first_stage")),
        "a checkpoint of a model=vqvae run, whose code maps the PixelCNN learns, with the "
        "PixelCNN only: model=vqvae_prior model.first_stage=<run dir>/checkpoints/last.ckpt",
    ),
    (
        "model.condition",
        lambda cfg: _part(cfg, "objective") != "M2" or cfg.model.get("condition") == "label",
        "label with model.objective=m2: M2 generates each image from its class (model=m2 sets it)",
    ),
    (
        "model.free_bits",
        lambda cfg: not cfg.model.get("free_bits") or _part(cfg, "objective") != "M2",
        "0 with model.objective=m2: a floor on a batch's mean KL has no form per class",
    ),
]


def check_config(
    cfg: DictConfig,
    rules: list[tuple[str, Callable, str]] = RULES,
    combinations: list[tuple[str, Callable, str]] = COMBINATION_RULES,
) -> None:
    """Raise ConfigError for the first value in `cfg` that breaks a rule, or pair of values that
    breaks a combination rule (train.py's by default; a config without a model has none)."""
    for key, test, allowed in rules:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not test(value):
            raise ConfigError(key, value, allowed)
    if "model" in cfg:
        for key, test, allowed in combinations:
            if not test(cfg):
                raise ConfigError(key, OmegaConf.select(cfg, key), allowed)


def check_required(command: str, cfg: DictConfig) -> None:
    """Raise ConfigError for a key that `command` (eval, sample, export) needs and is not set."""
    for key, example in REQUIRED.get(command, {}).items():
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(key, None, f"it is required, e.g. {example}")


# Hydra's own command-line flags that take a value (`hydra --help`): their values are not overrides.
HYDRA_VALUE_FLAGS = (
    ("--cfg", "-c"),
    ("--package", "-p"),
    ("--config-path", "-cp"),
    ("--config-name", "-cn"),
    ("--config-dir", "-cd"),
    ("--experimental-rerun",),
)


def parse_hydra_arguments(argv: list[str]) -> argparse.Namespace:
    """Hydra's command line as Hydra reads it: its flags apart, the rest in `overrides`.

    Hydra's parser itself is private (hydra._internal), so this declares the same flags.
    """
    parser = argparse.ArgumentParser(add_help=False)
    for names in HYDRA_VALUE_FLAGS:
        parser.add_argument(*names)
    parser.add_argument("--info", "-i", nargs="?")
    parser.add_argument("overrides", nargs="*")
    args, _ = parser.parse_known_args(argv)  # switches such as -m or --resolve are left out
    return args


def parsed_overrides(args: argparse.Namespace) -> list[Override] | None:
    """The command line's overrides as Hydra parses them; None for a line Hydra cannot parse,
    which Hydra then reports itself."""
    try:
        return OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return None


def _group_options() -> Callable[[str], list[str]]:
    """The options of a config group (none for a key that is not a group), from Hydra's loader;
    valid inside initialize_config_dir."""
    return GlobalHydra.instance().config_loader().get_group_options


def group_choices_by_dotted_key(config_dir: str | Path, argv: list[str]) -> list[str]:
    """Let a nested config group be chosen with a dot, as its values are set: `model.objective=
    iwae` becomes Hydra's `model/objective=iwae` when conf/model/objective/ is a group, so
    `model.objective=iwae model.objective.k=50` reads as one key."""
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        options = _group_options()
        rewritten = []
        for arg in argv:
            key, sep, value = arg.partition("=")
            group = key.replace(".", "/")
            plain = sep and "." in key and not key.startswith(("+", "~", "-"))
            if plain and not value.startswith("{") and options(group):
                arg = f"{group}={value}"
            rewritten.append(arg)
    return rewritten


def check_group_choices(config_dir: str | Path, argv: list[str]) -> None:
    """Raise ConfigError for a command-line option of a config group that does not exist.

    Hydra finds an unknown option (`model=foo`) while composing, before any of our code runs,
    and reports it in a dozen lines; this asks Hydra's own config loader for the options of each
    group named on the command line, sweeps (`model=conv,foo`) included, before Hydra starts.
    Anything this does not understand is left for Hydra to report.
    """
    args = parse_hydra_arguments(argv)
    extra = Path(args.config_dir) if args.config_dir else None
    if args.config_path or (extra and extra.is_dir() and any(p.is_dir() for p in extra.iterdir())):
        return  # options may come from groups in other config folders: Hydra knows them
    parsed = parsed_overrides(args)
    if parsed is None:
        return
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        group_options = _group_options()
        for override in parsed:
            group, value = override.key_or_group, override.value()
            options = group_options(group)
            if not options or override.is_delete():
                continue  # a value such as model.beta, not a group
            for choice in value.list if isinstance(value, ChoiceSweep) else [value]:
                # a list (`logger=[tensorboard,csv]`) chooses several options at once
                for option in choice if isinstance(choice, list) else [choice]:
                    if isinstance(option, str) and option not in options:
                        allowed = f"one of {', '.join(options)} (the files in conf/{group}/)"
                        raise ConfigError(group.replace("/", "."), option, allowed)


@functools.cache
def trainer_arguments() -> tuple[str, ...]:
    """Every argument of lightning.Trainer: each can be set as trainer.X=... (conf/trainer/ lists
    the common ones; the rest are added as Hydra's ++trainer.X=...).

    Read from the installed Lightning's source, which find_spec locates without importing it:
    importing Lightning takes longer than a refused command may. Should Lightning move its
    Trainer, the signature of the imported class is the answer."""
    init = _trainer_init_in_source()
    if init is None:
        import lightning

        names = list(inspect.signature(lightning.Trainer.__init__).parameters)
    else:
        names = [a.arg for a in (*init.args.posonlyargs, *init.args.args, *init.args.kwonlyargs)]
    return tuple(name for name in names if name != "self")


def _trainer_init_in_source() -> ast.FunctionDef | None:
    source = (
        Path(importlib.util.find_spec("lightning").origin).parent / "pytorch/trainer/trainer.py"
    )
    if not source.is_file():
        return None
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for init in node.body:
                if isinstance(init, ast.FunctionDef) and init.name == "__init__":
                    return init
    return None


def _closest(word: str, options: list[str]) -> list[str]:
    return difflib.get_close_matches(word, options, n=3, cutoff=0.6)


def _unknown_key(key: str, known: str, keys: list[str], hint: str) -> UnknownKeyError:
    leaf = key.rpartition(".")[2]
    parent = key.rpartition(".")[0]
    near = [f"{parent}.{k}" if parent else k for k in _closest(leaf, keys)]
    guess = f"did you mean {' or '.join(near)}? " if near else ""
    return UnknownKeyError(f"{key} is not {known}: {guess}{hint}")


def check_override_keys(config_dir: str | Path, config_name: str, argv: list[str]) -> list[str]:
    """The command line with every key checked against the composed config: a key it does not
    have (a typo such as model.latnt_dim) raises UnknownKeyError naming the closest keys, and an
    argument of lightning.Trainer that conf/trainer/ does not list (trainer.limit_train_batches)
    becomes Hydra's `++trainer.X=...`, so all of the Trainer's arguments work as Lightning users
    type them. The output folder Hydra will create must be writable.

    Hydra would find a misspelt key only while composing, in five lines of its own; this composes
    once with the command line's group choices (the first of a sweep) and looks each key up.
    Keys added with +, ++ or removed with ~, and Hydra's own keys, are left to Hydra.
    """
    args = parse_hydra_arguments(argv)
    parsed = parsed_overrides(args)
    if parsed is None:
        return argv
    extra_dirs = [d for d in (args.config_dir,) if d]
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        group_options = _group_options()
        choices, values, unset = [], [], []
        for override in parsed:
            group, value = override.key_or_group, override.value()
            if group_options(group) or any((Path(d) / group).is_dir() for d in extra_dirs):
                if isinstance(value, ChoiceSweep):
                    value = value.list[0]
                if override.is_delete():
                    choices.append(override.input_line)
                elif value is None and not override.is_sweep_override():
                    # `logger=null`, as `callbacks.pictures=null` switches a callback off; Hydra
                    # takes no null for a group on the command line (a traceback), only ~logger
                    unset.append(override)
                    choices.append(f"~{override.get_key_element()}")
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    choices.append(f"{override.get_key_element()}=[{','.join(value)}]")
                elif not isinstance(value, str):
                    return argv  # a glob or range of options: Hydra expands it
                else:
                    choices.append(f"{override.get_key_element()}={value}")
            elif group.startswith("hydra."):
                choices.append(override.input_line)  # e.g. hydra.run.dir, checked below
            elif not (override.is_add() or override.is_force_add() or override.is_delete()):
                values.append(override)
        searchpath = [f"hydra.searchpath=[file://{Path(d).resolve()}]" for d in extra_dirs]
        try:
            cfg = compose(config_name, [*choices, *searchpath], return_hydra_config=True)
        except Exception:  # anything Hydra cannot compose, Hydra reports itself
            return argv
    rewritten = list(argv)
    for override in unset:
        rewritten[rewritten.index(override.input_line)] = f"~{override.get_key_element()}"
    for override in values:
        key = override.key_or_group
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if OmegaConf.is_dict(parent) and leaf in list(parent):  # `in` misses a ??? value
            continue
        if OmegaConf.is_list(parent) and leaf.isdigit() and int(leaf) < len(parent):
            continue
        if parent_key == "trainer" and OmegaConf.is_dict(parent):
            if leaf in trainer_arguments():
                index = rewritten.index(override.input_line)
                rewritten[index] = "++" + override.input_line
                continue
            raise _unknown_key(
                key, "an argument of lightning.Trainer", list(trainer_arguments()), _TRAINER_HINT
            )
        while parent is None:  # report the first missing part: model.x.y when model has no x
            key, (parent_key, _, leaf) = parent_key, parent_key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if not OmegaConf.is_dict(parent):
            raise UnknownKeyError(f"{key} is not a key: {parent_key} is a value, not a group")
        if parent_key == "model" and leaf in MOVED:
            part, moved = MOVED[leaf]
            raise UnknownKeyError(
                f"{key} is not a key of model: it is model.{part}.{moved} since each part of "
                f"the model has its own config (conf/model/{part}/)"
            )
        keys = [str(k) for k in parent if k != "hydra"]
        where = f"a key of {parent_key}" if parent_key else "a top-level key"
        raise _unknown_key(key, where, keys, f"its keys: {', '.join(keys)} (+{key}=... adds one)")
    return rewritten


def compose_command_line(
    config_dir: str | Path, config_name: str, argv: list[str]
) -> DictConfig | None:
    """The config Hydra will compose from `argv` (as check_override_keys returns it), with
    Hydra's own config, to check its values before Hydra starts: a sweep of group options at its
    first option, a sweep of values left out (each job checks its own). None where this cannot
    compose it, e.g. with --config-path: Hydra reports what it finds itself."""
    args = parse_hydra_arguments(argv)
    if args.config_path:
        return None
    parsed = parsed_overrides(args)
    if parsed is None:
        return None
    extra_dirs = [d for d in (args.config_dir,) if d]
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        overrides = [f"hydra.searchpath=[file://{Path(d).resolve()}]" for d in extra_dirs]
        for override in parsed:
            value = override.value()
            if not override.is_sweep_override():
                overrides.append(override.input_line)
            elif isinstance(value, ChoiceSweep) and _group_options()(override.key_or_group):
                overrides.append(f"{override.get_key_element()}={value.list[0]}")
        try:
            return compose(args.config_name or config_name, overrides, return_hydra_config=True)
        except Exception:  # anything Hydra cannot compose, Hydra reports itself
            return None


def check_command_config(command: str, cfg: DictConfig, argv: list[str]) -> None:
    """What can be checked of a command's composed config (compose_command_line) without torch
    or the data: the rules of its keys, the keys it requires, a ckpt_path that is no file, an
    image size the conv network cannot halve, and the output folder Hydra will create."""
    check_required(command, cfg)
    check_config(cfg, {"sample": SAMPLE_RULES, "export": EXPORT_RULES}.get(command, RULES))
    if command == "train":
        check_optimized_metric(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path not in (None, "last") and not Path(ckpt_path).is_file():
        allowed = f"no such file; a checkpoint of train.py, e.g. {CHECKPOINT_EXAMPLE}"
        raise ConfigError("ckpt_path", ckpt_path, allowed)
    check_writable("hydra.sweep.dir" if is_multirun(cfg, argv) else "hydra.run.dir", cfg)
    size = OmegaConf.select(cfg, "data.image_size")
    if command == "train" and positive_int(size):
        # Last, as only this imports torch: each part checks its own values as it is built.
        from vae_lightning.parts import check_parts

        check_parts(cfg.model, (OmegaConf.select(cfg, "data.channels", default=1), size, size))


def is_multirun(cfg: DictConfig, argv: list[str]) -> bool:
    """Whether Hydra runs `argv` as a multirun (-m, or hydra.mode=MULTIRUN in the config)."""
    return "-m" in argv or "--multirun" in argv or cfg.hydra.mode == RunMode.MULTIRUN


_TRAINER_HINT = "see https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-flags"


def check_writable(key: str, cfg: DictConfig) -> None:
    """Raise UserError when the folder at `key` (hydra.run.dir, ...) cannot be created.

    Hydra creates it before any of our code runs and fails with a traceback; this tries a
    temporary folder in its nearest existing parent instead, so nothing is left behind."""
    try:
        folder = Path(OmegaConf.select(cfg, key)).absolute()
    except Exception:  # an interpolation known only inside Hydra's job: Hydra reports it
        return
    existing = folder
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        Path(tempfile.mkdtemp(dir=existing)).rmdir()
    except OSError as error:
        reason = error.strerror or str(error)
        raise UserError(
            f"{key}={folder} cannot be created ({reason} in {existing}): choose a writable "
            f"folder, e.g. {key}=outputs/run"
        ) from None


# The metrics train.py can hand to a sweeper (`optimized_metric`): the keys of metrics.json
# that are numbers of the validation or test split.
OPTIMIZABLE_PREFIXES = ("best_val/", "val/", "test/")


def check_optimized_metric(cfg: DictConfig) -> None:
    """`optimized_metric` must name a validation or test metric (or be null: nothing returned)."""
    name = cfg.get("optimized_metric")
    if name is not None and not (isinstance(name, str) and name.startswith(OPTIMIZABLE_PREFIXES)):
        raise ConfigError(
            "optimized_metric",
            name,
            "a metric of metrics.json such as best_val/loss, val/elbo or test/iwae_nll",
        )


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value of `optimized_metric` among a run's final metrics, for a sweeper."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if name.startswith("best_") and not metrics.get("best_checkpoint"):
        return None  # no checkpoint was kept (e.g. fast_dev_run): there is no best value
    if name not in metrics:
        numbers = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        raise ConfigError("optimized_metric", name, f"one of {', '.join(numbers)}")
    return metrics[name]
