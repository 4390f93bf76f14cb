"""What `export.py` runs: a checkpoint of train.py as a folder to share, in the layout of the
Hugging Face Hub's PyTorchModelHubMixin: the weights (model.safetensors) and the constructor
arguments (config.json) that `VAE.save_pretrained` writes, a grid of samples and one of
reconstructions, and a model card (README.md) with the run's hyperparameters and metrics.
`VAE.from_pretrained(DIR)` loads it with nothing else at hand, and the folder as it is can be
published to the Hub."""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from huggingface_hub.utils import is_jsonable
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

from vae_lightning.config import EXPORT_RULES, check_config, check_required
from vae_lightning.drawing import reconstruction_grid, sample_grid
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.parts import PARTS
from vae_lightning.runs import load_checkpoint_model, run_data_config, run_dir_of

log = logging.getLogger(__name__)

SAMPLES, RECONSTRUCTIONS, CARD = "samples.png", "reconstructions.png", "README.md"
# What an export writes (the first two by save_pretrained): all an earlier export may hold.
WRITTEN = ("model.safetensors", "config.json", CARD, SAMPLES, RECONSTRUCTIONS)


# Rendered by huggingface_hub's ModelCard.from_template (Jinja2): `card_data` is the YAML front
# matter the Hub reads (library_name, tags, pipeline_tag: those the mixin gives the VAE class).
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

A variational autoencoder trained with vae-lightning (PyTorch Lightning + Hydra): {{ summary }}.
Exported from the checkpoint `{{ checkpoint }}`.

## Samples

{% if n_classes -%}
Decodings of draws from the prior, a row per class ({{ class_names }}), with
`torch.Generator().manual_seed({{ seed }})`; `model.sample(n, y=classes)` draws given classes:
{%- else -%}
`model.sample({{ n_images }}, torch.Generator().manual_seed({{ seed }}))`, decodings of draws from
the prior:
{%- endif %}

![Samples from the prior]({{ samples }})

## Reconstructions

{% if reconstructions -%}
The first {{ n_test }} test images of the run (odd columns), each beside
`model.reconstruct(x)`, its decoding at the posterior mean:

![Test images and their reconstructions]({{ reconstructions }})
{%- else -%}
Not drawn: {{ no_reconstructions }}
{%- endif %}

## Metrics

{% if metric_rows -%}
From the run's metrics.json{% if metrics_note %} ({{ metrics_note }}){% endif %}:
`test/` values are of the test split, `val/` ones of the last validation, in nats per image
unless named otherwise (`bpd`: bits per dimension).

| metric | value |
|---|---|
{% for name, value in metric_rows -%}
| `{{ name }}` | {{ value }} |
{% endfor -%}
{%- else -%}
None: {{ no_metrics }}
{%- endif %}

## Hyperparameters

The arguments of `VAE(...)`, as in config.json:

| argument | value |
|---|---|
{% for name, value in hparams -%}
| `{{ name }}` | `{{ value }}` |
{% endfor %}
## Usage

With vae-lightning installed:

```python
import torch
from vae_lightning.module import VAE

model = VAE.from_pretrained("{{ name }}")  # this folder, or its repo id on the Hub
{% if n_classes -%}
y = torch.arange(16) % {{ n_classes }}  # the class of each image: conditional model
images = model.sample(16, torch.Generator().manual_seed(0), y=y)  # {{ shape }}, in [0, 1]
mu, logvar = model.encode(images, y)  # the posterior q(z|x,y)
reconstructions = model.reconstruct(images, y)
{%- else -%}
images = model.sample(16, torch.Generator().manual_seed(0))  # {{ shape }}, in [0, 1]
mu, logvar = model.encode(images)  # the posterior q(z|x)
reconstructions = model.reconstruct(images)
{%- endif %}
```

To publish on the Hub (after `hf auth login`), this folder as it is, card and pictures included:

```python
from huggingface_hub import HfApi

api = HfApi()
repo_id = api.create_repo("<user>/{{ name }}", exist_ok=True).repo_id
api.upload_folder(repo_id=repo_id, folder_path="{{ name }}")
```

or the weights and config.json alone, with the mixin's own card:
`VAE.from_pretrained("{{ name }}").push_to_hub("<user>/{{ name }}")`.
"""


def export(cfg: DictConfig) -> Path:
    """Export `cfg.ckpt_path` into the folder `cfg.out` (see conf/export.yaml)."""
    check_required("export", cfg)
    check_config(cfg, EXPORT_RULES)
    return export_checkpoint(cfg.ckpt_path, cfg.out, n_images=cfg.n_images, seed=cfg.seed)


def export_checkpoint(
    ckpt_path: str | Path, out_dir: str | Path, n_images: int = 32, seed: int = 0
) -> Path:
    """Write the shareable folder of a checkpoint of train.py to `out_dir`, and return it.

    The metrics come from `<run dir>/metrics.json`, the test images of the reconstructions from
    the data config the run saved; without them the card says so. Everything is computed before
    the first file is written: a checkpoint or data that fails leaves no half-written folder.
    A ConfigError for a checkpoint that cannot be loaded, or an `out_dir` that cannot be written
    or already holds other files than an earlier export's."""
    model = load_checkpoint_model(str(ckpt_path))
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    with torch.no_grad():
        samples = sample_grid(model, n_images, torch.Generator().manual_seed(seed))
        images, y, no_reconstructions = run_test_images(ckpt_path, n_images, model)
        reconstructions = None if images is None else reconstruction_grid(model, images, y)
    check_json_arguments(model)
    metrics_path = run_dir_of(ckpt_path) / "metrics.json"
    card = model_card(
        model,
        out_dir.resolve().name,
        ckpt_path,
        read_metrics(metrics_path),
        n_images=n_images,
        seed=seed,
        n_test=0 if images is None else len(images),
        no_reconstructions=no_reconstructions,
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        card.save(out_dir / CARD)  # first: save_pretrained writes a card only where there is none
        model.save_pretrained(out_dir)
        # safetensors writes its file for the owner alone; the folder is there to be shared
        weights = out_dir / "model.safetensors"
        weights.chmod((out_dir / CARD).stat().st_mode & 0o777)
        save_image(samples, out_dir / SAMPLES)
        if reconstructions is None:  # an earlier export's picture would not be of this model
            (out_dir / RECONSTRUCTIONS).unlink(missing_ok=True)
        else:
            save_image(reconstructions, out_dir / RECONSTRUCTIONS)
    except OSError as error:
        raise ConfigError(
            "out", str(out_dir), f"a folder that can be written ({type(error).__name__}: {error})"
        ) from None
    log.info("exported %s to %s", ckpt_path, out_dir)
    return out_dir


def check_out_dir(out_dir: Path) -> None:
    """A ConfigError unless `out_dir` is new, empty or an earlier export: whatever else is
    there would be published along with the model."""
    allowed = "a new or empty folder, or one that export.py wrote before"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("out", str(out_dir), f"{allowed} (it is a file)")
    try:
        others = sorted(p.name for p in out_dir.iterdir() if p.name not in WRITTEN)
    except (FileNotFoundError, NotADirectoryError):  # new: writing it says if it can be
        return
    except OSError as error:
        raise ConfigError("out", str(out_dir), f"{allowed} ({type(error).__name__})") from None
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError("out", str(out_dir), f"{allowed} (it holds {shown})")


def check_json_arguments(model: VAE) -> None:
    """The mixin leaves out of config.json, without a word, any argument of VAE(...) that is not
    JSON; from_pretrained would then build another model. train.py's checkpoints hold plain
    data only, so this is a model built some other way."""
    not_json = [key for key, value in model.hparams.items() if not is_jsonable(value)]
    if not_json:
        raise TypeError(f"VAE arguments that config.json cannot hold: {', '.join(not_json)}")


def run_test_images(
    ckpt_path: str | Path, n: int, model: VAE
) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
    """The first n test images of the run's data and the condition `model` reads of their
    labels (model.condition_of), or None, None and why not."""
    try:
        datamodule = instantiate(run_data_config(ckpt_path, "export.py's reconstructions"))
        datamodule.prepare_data()
        datamodule.setup("test")
        images, labels = datamodule.examples("test", n)
    except ConfigError as error:
        log.warning("no reconstructions: %s", error)
        return (
            None,
            None,
            (
                "the run's test images were not found (a checkpoint in `<run dir>/checkpoints/` "
                "needs `<run dir>/.hydra/config.yaml`, and the data it names)."
            ),
        )
    return images, model.condition_of(labels, datamodule), None


def read_metrics(path: Path) -> dict[str, Any] | str:
    """The metrics of metrics.json, or why there are none."""
    if not path.is_file():
        return f"the run's metrics.json was not found ({path.name} beside `checkpoints/`)."
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return f"the run's metrics.json could not be read ({type(error).__name__})."


def shown_value(value: Any) -> str | None:
    """A metric as the card shows it (6 significant digits); None for what is not a number,
    e.g. the paths of this machine."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        return None
    if isinstance(value, list):
        items = [shown_value(item) for item in value]
        return None if None in items else f"[{', '.join(items)}]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def model_card(
    model: VAE,
    name: str,
    ckpt_path: str | Path,
    metrics: dict[str, Any] | str,
    n_images: int,
    seed: int,
    n_test: int,
    no_reconstructions: str | None,
) -> ModelCard:
    """The README.md of the folder, with the front matter the mixin gives the VAE class."""
    hparams = dict(model.hparams)
    name = {part: type(getattr(model, part)).__name__ for part in PARTS}
    channels, height, width = model.image_shape
    summary = (
        f"a `{name['network']}` network, {hparams['latent_dim']} latent dimensions, a "
        f"`{name['posterior']}` q(z|x), a `{name['likelihood']}` p(x|z) and a `{name['prior']}` "
        f"prior, trained on the `{name['objective']}` objective (beta={hparams['beta']}) with "
        f"{channels}×{height}×{width} images"
    )
    ckpt = Path(ckpt_path)
    rows, note = None, ""
    if isinstance(metrics, dict):
        rows = [(k, v) for k, v in ((k, shown_value(v)) for k, v in metrics.items()) if v]
        best = metrics.get("best_checkpoint")
        if best and Path(best).resolve() != ckpt.resolve():
            note = f"the test metrics are of `{Path(best).name}`, not of this `{ckpt.name}`"
        elif best:
            note = f"the test metrics are of this checkpoint, `{ckpt.name}`"
    return ModelCard.from_template(
        model.generate_model_card().data,  # library_name, tags and pipeline_tag of the class
        template_str=CARD_TEMPLATE,
        name=name,
        summary=summary,
        checkpoint=ckpt.name,
        n_images=n_images,
        seed=seed,
        n_test=n_test,
        samples=SAMPLES,
        reconstructions=None if no_reconstructions else RECONSTRUCTIONS,
        no_reconstructions=no_reconstructions,
        metric_rows=rows,
        metrics_note=note,
        no_metrics=metrics if isinstance(metrics, str) else "",
        hparams=[(k, json.dumps(v).replace("|", "\\|")) for k, v in sorted(hparams.items())],
        shape=f"(16, {channels}, {height}, {width})",
        n_classes=model.n_classes,
        class_names=", ".join(hparams.get("class_names") or map(str, range(model.n_classes))),
    )
