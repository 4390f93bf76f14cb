"""What the entry points run: each function takes a composed Hydra config and does one job."""

import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from vae_lightning.callbacks import Pictures, console_callbacks, log_hparams_with_metrics
from vae_lightning.config import check_config, check_optimized_metric
from vae_lightning.errors import ConfigError, user_errors_of_instantiation
from vae_lightning.file_only import FILE_ONLY
from vae_lightning.legacy import migrate_hparams
from vae_lightning.metrics import evaluate_model
from vae_lightning.phases import Phases
from vae_lightning.runs import checkpoint_to_resume, load_checkpoint_model, run_data_config
from vae_lightning.sample_quality import sample_metrics
from vae_lightning.stages import adopt_first_stage, start_second_stage

log = logging.getLogger(__name__)

# Written beside metrics.json: the IWAE NLL of each test image, for comparisons image by image.
PER_IMAGE_NLL = "iwae_nll_per_image.pt"


# Lightning's messages that nobody can act on: an advertisement, the seed (the config has it),
# lines about GPUs and TPUs on machines without one, the note that our RichModelSummary
# replaces its default summary, and a deprecation inside Lightning's own _pytree module.
LIGHTNING_NOISE = (
    "💡 Tip: For seamless cloud logging",
    "Seed set to",  # the seed is in the config and .hydra/config.yaml
    "GPU available: False, used: False",
    "TPU available: False",
    "Trainer already configured with model summary callbacks",
)


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Leave out of the console what a user cannot act on (LIGHTNING_NOISE); in the job's
    process, so that parallel launchers' workers are quiet too."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
            logger.addFilter(_DropLightningNoise())
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module="lightning"
    )
    # A continued run (resume=, ckpt_path=last) saves into its own checkpoint folder again, by
    # design; ModelCheckpoint warns whenever that folder holds files, with no option not to.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every object configured under a group such as `callbacks` or `logger` (null entries off)."""
    return [instantiate(entry) for entry in (group or {}).values() if entry]


def test_metrics(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    eval_cfg: DictConfig,
    output_dir: Path,
    ckpt_path: str | None = None,
    phases: Phases | None = None,
    weights_file: str | None = None,
) -> dict[str, Any]:
    """The ELBO terms of trainer.test on the test split, then evaluate_model's metrics of the same
    weights (trainer.test loads `ckpt_path` into `model`) on as many test batches as the
    Trainer's limit_test_batches allows, and the sample metrics (`eval_cfg.samples`, null for
    none), in one process (rank zero) only; the IWAE NLL of each image goes to
    `<output_dir>/iwae_nll_per_image.pt`. Each part is timed into `phases`. The Gaussian mixture
    sampler is kept beside the file of the weights: `ckpt_path`, else `weights_file` (the
    checkpoint a caller loaded into `model` itself)."""
    phases = phases or Phases()
    with phases("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics: dict[str, Any] = {k: v.item() for k, v in sorted(trainer.callback_metrics.items())}
    if trainer.is_global_zero:
        with phases("evaluation"):
            metrics |= evaluate_model(
                model,
                datamodule,
                eval_cfg.iwae_k,
                eval_cfg.max_rows,
                trainer.strategy.root_device,
                max_batches=sum(trainer.num_test_batches),
                disentanglement=OmegaConf.to_container(eval_cfg.disentanglement),
                per_image_path=output_dir / PER_IMAGE_NLL,
                iwae_images=eval_cfg.get("iwae_images"),
                conditional_samples=eval_cfg.get("conditional_samples"),
            )
        if eval_cfg.get("samples"):
            with phases("sample metrics"):
                metrics |= sample_metrics(
                    model, datamodule, eval_cfg.samples, ckpt_path or weights_file
                )
    return metrics


def check_accelerator(key: str, accelerator: Any) -> None:
    """A GPU accelerator needs a GPU: say so in one line before Lightning says it in six."""
    name = str(accelerator).lower()
    missing = (name in ("gpu", "cuda") and not torch.cuda.is_available()) or (
        name == "mps" and not torch.backends.mps.is_available()
    )
    if missing:
        raise ConfigError(key, accelerator, "cpu or auto: this machine has no GPU (trainer=cpu)")


def train(cfg: DictConfig, startup: dict[str, float] | None = None) -> dict[str, Any]:
    """Fit the model, test the best checkpoint and write `metrics.json`; return the metrics.
    `startup`: the seconds the process spent before this run (phases.startup_phases).

    W&B's run, when there is one, is finished however the job ends, so the next job of a
    multirun in the same process gets a run of its own."""
    failed = True
    try:
        metrics = fit_and_test(cfg, startup)
        failed = False
        return metrics
    finally:
        if "wandb" in sys.modules:  # only a run that imported it can have a W&B run open
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=int(failed))


def condition_arguments(model_cfg: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """What a conditional model (model.condition=label) takes of the data: its classes, by name,
    so that the checkpoint names them (sample.py label=sneaker)."""
    if not model_cfg.get("condition"):
        return {}
    class_names = getattr(datamodule, "class_names", None)
    if not class_names:
        raise ConfigError(
            "model.condition",
            model_cfg["condition"],
            f"null with data={getattr(datamodule, 'name', type(datamodule).__name__)}: its images "
            "have no classes to condition on (mnist, fashion_mnist, kmnist, cifar10 and shapes "
            "have, and a folder of class subfolders)",
        )
    return {"n_classes": len(class_names), "class_names": list(class_names)}


def fit_and_test(cfg: DictConfig, startup: dict[str, float] | None = None) -> dict[str, Any]:
    check_config(cfg)
    check_optimized_metric(cfg)
    check_accelerator("trainer.accelerator", cfg.trainer.get("accelerator"))
    quiet_lightning()
    started = time.perf_counter()
    phases = Phases(startup)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    L.seed_everything(cfg.seed, workers=True)

    with phases("data"):
        datamodule = instantiate(cfg.data)
        second_stage = cfg.model.get("first_stage") is not None
        first_stage = adopt_first_stage(cfg)
        ckpt_path = checkpoint_to_resume(cfg, datamodule.image_shape)
    with phases("model"):
        # Plain lists and dicts, the optimiser left as config: the checkpoint's hparams stay data.
        # A run of before the parts, resumed, has its model config flat (legacy.py).
        model_cfg = migrate_hparams(OmegaConf.to_container(cfg.model, resolve=True))
        with user_errors_of_instantiation():
            model = instantiate(
                model_cfg,
                image_shape=datamodule.image_shape,
                **condition_arguments(model_cfg, datamodule),
                _recursive_=False,
                _convert_="all",
            )
        if second_stage:
            start_second_stage(model, first_stage)
        loggers = instantiate_all(cfg.get("logger"))
        callbacks = [*instantiate_all(cfg.get("callbacks")), *console_callbacks(cfg.trainer)]
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    with phases("data"):
        if trainer.local_rank == 0:
            # Here as well as in fit: missing data stops the run now, as a ConfigError.
            datamodule.prepare_data()
        # Loaded (rendered) here rather than inside fit, to be timed as a phase of its own; under
        # DDP, fit's own setup, which waits until rank zero has prepared the data, does it.
        if trainer.world_size == 1:
            datamodule.setup("fit")

    with phases("epochs"):  # training, validation, checkpoints
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    pictures = sum(c.seconds for c in trainer.callbacks if isinstance(c, Pictures))
    phases.split_off("pictures", pictures, "epochs")
    validation = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    output_dir = Path(cfg.paths.output_dir)
    metrics = test_metrics(
        trainer, model, datamodule, cfg.eval, output_dir, best_path or None, phases
    )
    metrics |= validation  # the last validation's values
    if checkpoint and checkpoint.best_model_score is not None:
        metrics[f"best_{checkpoint.monitor}"] = checkpoint.best_model_score.item()
    metrics.update(
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        wall_time_s=round(time.perf_counter() - started, 1),
        best_checkpoint=best_path,
        phases_s=phases.rounded(),
    )
    log.info("time: %s", phases.summary())
    report_metrics(metrics, output_dir)
    # Here, not in a callback: only now are all final numbers known, the same as in metrics.json.
    log_hparams_with_metrics(trainer.loggers, cfg, metrics, trainer.global_step)
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of the data it was trained on (or of `cfg.data`):
    the ELBO terms from the model's test_step, then evaluate_model's metrics; write metrics.json.
    """
    check_config(cfg)
    check_accelerator("accelerator", cfg.accelerator)
    quiet_lightning()
    started = time.perf_counter()
    # The model is rebuilt from the checkpoint's own hparams, never from a default config.
    model = load_checkpoint_model(cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    data_cfg = cfg.data if cfg.get("data") else run_data_config(cfg.ckpt_path, "eval.py")
    datamodule = instantiate(data_cfg)
    if tuple(datamodule.image_shape) != model.image_shape:
        raise ConfigError(
            "data",
            type(datamodule).__name__ + str(tuple(datamodule.image_shape)),
            f"data whose images have the model's shape {model.image_shape}",
        )
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,  # nothing to save; and no tip about checkpoint uploads
        default_root_dir=cfg.paths.output_dir,
        limit_test_batches=cfg.eval.limit_test_batches,
    )
    datamodule.prepare_data()
    metrics = test_metrics(
        trainer, model, datamodule, cfg.eval, Path(cfg.paths.output_dir), weights_file=cfg.ckpt_path
    )
    metrics.update(
        checkpoint=str(cfg.ckpt_path), wall_time_s=round(time.perf_counter() - started, 1)
    )
    report_metrics(metrics, Path(cfg.paths.output_dir))
    return metrics


@rank_zero_only
def report_metrics(metrics: dict[str, Any], output_dir: Path) -> None:
    """Print the final metrics as a table, put the same table in the log file, and write them to
    `<output_dir>/metrics.json`."""
    table = Table(title="final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    plain = Console(file=io.StringIO(), width=100)  # not a terminal: no colours
    plain.print(table)
    log.info("the final metrics:\n%s", plain.file.getvalue().rstrip(), extra=FILE_ONLY)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("metrics written to %s", output_dir / "metrics.json")
