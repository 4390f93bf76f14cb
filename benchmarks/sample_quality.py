"""Sample quality of a trained VAE's prior samples: FID, KID and precision/recall against the test
split, in the space of a feature network.

    python benchmarks/sample_quality.py ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt
    python benchmarks/sample_quality.py ckpt_path=... n=1000 seed=1 temperature=0.8
    python benchmarks/sample_quality.py ckpt_path=... inception=pt_inception.pt
    python benchmarks/sample_quality.py ckpt_path=... samples=training_images  # the floor

It draws n images from the prior (10,000 by default, from a generator of the seed), takes as many
of the run's test images (all of them where the split is smaller), and prints the metrics
(vae_lightning.sample_quality) with the feature network's test accuracy beside them; they go to
`out` too (default: <run dir>/sample_quality.json). The feature network is the package's
classifier of the run's data (Fashion-MNIST, the shapes), so a run on other data needs
`inception=PATH`: Inception v3 weights (vae_lightning.features.inception_features says which
files). Numbers of a shipped network are NOT Inception FIDs, and the output says so.
"""

import json
import logging
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.errors import ConfigError, UserError
from vae_lightning.features import (
    FeatureNetwork,
    inception_features,
    shipped_data,
    shipped_features,
)
from vae_lightning.progress import Progress
from vae_lightning.runs import load_checkpoint_model, run_data_config, run_dir_of
from vae_lightning.sample_quality import SampleQuality

log = logging.getLogger(__name__)

DEFAULTS = {
    "ckpt_path": None,
    "n": 10_000,
    "seed": 0,
    "batch_size": 500,
    "temperature": 1.0,
    "inception": None,
    "out": None,
    "samples": "prior",
}
# what stands for the generated images: the prior's samples, or as many training images, whose
# numbers against the test images are the floor a perfect model would reach
SAMPLES = ("prior", "training_images")


def feature_network(inception: str | None, data_name: str, image_shape) -> FeatureNetwork:
    if inception is not None:
        if not Path(inception).is_file():
            raise ConfigError(
                "inception", inception, "a file of Inception v3 weights (no such file)"
            )
        return inception_features(inception)
    network = shipped_features(data_name, image_shape)
    if network is None:
        raise ConfigError(
            "inception",
            None,
            f"the run's data ({data_name}, {tuple(image_shape)}) has no shipped feature network "
            f"({shipped_data()} have one): give inception=PATH, Inception v3 weights",
        )
    return network


def add_real_images(
    quality: SampleQuality, datamodule, split: str, n: int, batch_size: int, real: bool
) -> int:
    """The first n images of a split added to `quality` as real or generated; their number."""
    # the grey images themselves, not binarised as a run with data.binarize may see them
    images = datamodule.by_batch(datamodule.split(split))
    n = min(n, len(images))
    with Progress(f"features of the {split} images", total=n, unit="images") as progress:
        for index in torch.arange(n).split(batch_size):
            quality.update(to_unit_float(images[index][0]), real=real)
            progress.advance(len(index))
    return n


def measure(cfg) -> dict[str, float]:
    if cfg.n < 4:  # precision/recall needs more points than its k = 3 neighbours
        raise ConfigError("n", cfg.n, "at least 4 images")
    if cfg.samples not in SAMPLES:
        raise ConfigError("samples", cfg.samples, " or ".join(SAMPLES))
    model = load_checkpoint_model(cfg.ckpt_path)
    datamodule = instantiate(run_data_config(cfg.ckpt_path, "benchmarks/sample_quality.py"))
    network = feature_network(cfg.inception, datamodule.name, model.hparams.image_shape)
    quality = SampleQuality(network)
    real_n = add_real_images(quality, datamodule, "test", cfg.n, cfg.batch_size, real=True)
    if cfg.samples == "training_images":
        generated_n = add_real_images(quality, datamodule, "train", cfg.n, cfg.batch_size, False)
    else:
        generator = torch.Generator().manual_seed(cfg.seed)
        with Progress("prior samples and their features", total=cfg.n, unit="images") as progress:
            for count in torch.arange(cfg.n).split(cfg.batch_size):
                images = model.sample(len(count), generator, temperature=cfg.temperature)
                quality.update(images, real=False)
                progress.advance(len(count))
        generated_n = cfg.n
    log.info(
        "FID, KID and precision/recall of %d generated and %d test images", generated_n, real_n
    )
    torch.manual_seed(cfg.seed)  # KID's random subsets
    return quality.compute() | {"generated_images": generated_n, "test_images": real_n}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # Progress reports through it
    cfg = OmegaConf.create(DEFAULTS)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as error:
        first_line = str(error).splitlines()[0]  # OmegaConf adds the key and type below it
        print(f"error: {first_line} (keys: {', '.join(DEFAULTS)})", file=sys.stderr)
        sys.exit(2)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    try:
        metrics = measure(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(cfg.out) if cfg.out else run_dir_of(cfg.ckpt_path) / "sample_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    for name, value in metrics.items():
        print(f"{name}: {value:.6g}" if isinstance(value, float) else f"{name}: {value}")
    accuracy = next((k for k in metrics if k.endswith("_test_accuracy")), None)
    if accuracy is not None:
        print(
            "These are NOT Inception FIDs: the features are those of vae_lightning's own "
            f"{accuracy.removesuffix('_features_test_accuracy')} classifier (test accuracy "
            f"{metrics[accuracy]:.4f}); compare them only with numbers of the same network."
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
