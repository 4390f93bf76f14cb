"""Evaluation metrics beyond the ELBO: the IWAE estimate of the NLL, KL per latent dimension,
active units and, on data with known factors, the disentanglement metrics (disentanglement.py);
for a conditional model, the same of p(x|y) and, on Fashion-MNIST, its conditional accuracy.

The ELBO and its terms on the test split come from the LightningModule's own test_step (one home
for the loss); `evaluate_model` adds the rest in one pass over the test split.
"""

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from vae_lightning.disentanglement import factor_metrics
from vae_lightning.elbo import iwae_bound
from vae_lightning.features import SHIPPED, ShippedNetwork
from vae_lightning.features.accuracy import conditional_accuracy
from vae_lightning.progress import Progress, duration

log = logging.getLogger(__name__)

ACTIVITY_THRESHOLD = 0.01  # Burda et al. 2016: active when Var_x(E_q[z_d]) > 0.01


def bits_per_dim(nll_nats: float, n_dims: int) -> float:
    """Nats per image to bits per pixel value. With a continuous likelihood on values in [0, 1],
    add 8 to compare with bits/dim reported for dequantised 0..255 images."""
    return nll_nats / (n_dims * math.log(2))


def active_units(mu: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD) -> int:
    """How many latent dims have a posterior mean E_q[z_d] whose variance over the data (rows of
    mu, shape (N, D)) exceeds `threshold`; the rest are collapsed onto the prior."""
    return int((mu.var(dim=0) > threshold).sum())


def _images_in(loader: DataLoader, max_batches: int | float) -> int:
    """How many images the first `max_batches` batches of a loader hold (without loading them):
    all of its dataset, or that many batches of its batch size (the sampler's, for
    InMemoryDataModule's loaders of whole batches)."""
    n_images = len(loader.dataset)
    if max_batches >= len(loader):
        return n_images
    batch_size = loader.batch_size or getattr(loader.sampler, "batch_size", None)
    return min(n_images, int(max_batches) * batch_size) if batch_size else n_images


class IwaeCostForecast:
    """Says, in one log line, what the IWAE bound will cost before most of it is spent: its
    images x k decoded images, and the time that takes here, extrapolated from its first chunk
    of draws (real work, so the estimate costs nothing and draws nothing extra); and which keys
    make it shorter. At k = 1000 on a whole test split that is minutes, which a user should
    learn at the start, not from the end line."""

    def __init__(self, n_images: int, k: int):
        self.n_images, self.k = n_images, k
        self.pending = True

    def draw(self, log_weights_of: Callable[[], torch.Tensor]) -> torch.Tensor:
        """log_weights_of(), a chunk's (draws, images) log weights; the first chunk is timed and
        announces the cost of the whole bound."""
        if not self.pending:
            return log_weights_of()
        started = time.perf_counter()
        log_weights = log_weights_of()
        log_weights.sum().item()  # waits for an accelerator: the chunk's real time
        self.pending = False
        self.announce(log_weights.numel(), time.perf_counter() - started)
        return log_weights

    def announce(self, timed_decodings: int, seconds: float) -> None:
        decodings = self.n_images * self.k
        log.info(
            "IWAE bound (k=%d): %s test images x %d draws = %s decoded images, about %s on "
            "this machine (timed on the first %s); eval.iwae_images=N and eval.iwae_k=K make it "
            "shorter",
            self.k,
            f"{self.n_images:,}",
            self.k,
            f"{decodings:,}",
            duration(seconds * decodings / timed_decodings),
            f"{timed_decodings:,}",
        )


@torch.no_grad()
def conditional_sample_accuracy(
    model: L.LightningModule,
    network: ShippedNetwork,
    per_class: int,
    class_names: list[str],
    max_rows: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The conditional accuracy of `per_class` samples of each class (drawn from `seed`, at most
    `max_rows` at a time), by the data's shipped classifier, beside its own test accuracy
    (features/accuracy.py), as test/ metrics."""
    generator = torch.Generator(model.device).manual_seed(seed)
    classes = torch.arange(model.n_classes, device=model.device).repeat_interleave(per_class)
    images = torch.cat([model.sample(len(y), generator, y=y) for y in classes.split(max_rows)])
    accuracy = conditional_accuracy(images, classes, network)
    return {f"test/{name}": value for name, value in accuracy.metrics(class_names).items()}


@torch.no_grad()
def evaluate_model(
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    iwae_k: int,
    max_rows: int = 8192,
    device: torch.device | str = "cpu",
    max_batches: int | float = float("inf"),
    disentanglement: dict[str, Any] | None = None,
    per_image_path: Path | None = None,
    iwae_images: int | None = None,
    conditional_samples: int | None = None,
) -> dict[str, Any]:
    """test/iwae_nll (nats/image) and its standard error over the images, test/iwae_bpd,
    test/kl_per_dim, test/active_units, the number of test/images they are computed on, for a
    hierarchical model test/kl_per_layer (the ELBO's KL of each layer, bottom first, at one
    posterior draw), test/active_units_per_layer and test/kl_per_dim over all layers, and,
    when the data's labels are factors of variation, the disentanglement metrics that
    `disentanglement` (conf/disentanglement/) names, as test/<metric>; all on the test split (its
    first `max_batches` batches: the Trainer's limit_test_batches, so a smoke run stays short).
    `per_image_path`, when given, receives the IWAE NLL of each test image in order (a float
    tensor), so that models evaluated on the same images can be compared image by image.
    `iwae_images`, when given, bounds the IWAE NLL to the split's first that many images
    (test/iwae_images says how many), its k draws per image being most of the cost; the other
    metrics still see every image.

    A conditional model is given each test image's class: its IWAE bound is of log p(x|y), and
    `test/conditioned_on` says so; on data with a shipped classifier (Fashion-MNIST, shapes),
    `conditional_samples` per class (None: none) give its conditional accuracy
    (conditional_sample_accuracy).

    A plain loop rather than trainer.test: active units and MIG need the posterior means of the
    whole split at once, which per-batch logging would average away.
    """
    model.to(device).eval()
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    iwae, mus, kls, labels, layer_mus, layer_kls = [], [], [], [], [], []
    n_iwae = min(_images_in(loader, max_batches), iwae_images or float("inf"))
    forecast = IwaeCostForecast(n_iwae, iwae_k)
    # Progress in images, advanced by each chunk of draws (a batch's k draws may take minutes):
    # plain numbers, no tensor is read back from the device for it (the forecast reads one, once).
    with Progress(f"IWAE bound (k={iwae_k})", n_iwae, "images") as bar:
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            batch = datamodule.transfer_batch_to_device(batch, model.device, 0)
            images, batch_labels = datamodule.on_after_batch_transfer(batch, 0)
            y = model.condition_of(batch_labels, datamodule)
            bounded = images[: n_iwae - sum(map(len, iwae))]
            y_bounded = None if y is None else y[: len(bounded)]

            def draws(
                n: int, bounded: torch.Tensor = bounded, y: torch.Tensor | None = y_bounded
            ) -> torch.Tensor:
                log_weights = forecast.draw(
                    lambda: model.log_importance_weights(bounded, n, y=y)[0]
                )
                bar.advance(len(bounded) * n / iwae_k)
                return log_weights

            if len(bounded):
                iwae.append(iwae_bound(draws, iwae_k, len(bounded), max_rows))
            layers = model.posterior_by_layer(images, y)
            layer_mus.append([layer.mean for layer in layers])
            mus.append(layers[-1].mean)  # the top layer's: encode(x)'s mean
            labels.append(batch_labels)
            kls.append(torch.cat([layer.kl_per_dim for layer in layers], dim=1))
            if len(layers) > 1:
                layer_kls.append(model.elbo_terms(images, y).kl_per_layer)
    bounds = torch.cat(iwae)
    nll = -bounds.mean().item()
    if per_image_path is not None:
        per_image_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(-bounds.cpu(), per_image_path)
    mu = torch.cat(mus).cpu()
    units = [active_units(torch.cat(layer).cpu()) for layer in zip(*layer_mus, strict=True)]
    metrics: dict[str, Any] = {
        "test/iwae_nll": nll,
        # the standard error of that mean over the images (not of the bound's own bias)
        "test/iwae_nll_sem": (bounds.std() / math.sqrt(len(bounds))).item(),
        "test/iwae_bpd": bits_per_dim(nll, math.prod(images.shape[1:])),
        "test/iwae_k": iwae_k,
        "test/iwae_images": len(bounds),
        "test/images": len(mu),
        "test/active_units": sum(units),
        "test/kl_per_dim": [round(v, 4) for v in torch.cat(kls).mean(dim=0).tolist()],
    }
    if model.n_classes:
        metrics["test/conditioned_on"] = model.hparams.condition
        network = SHIPPED.get(getattr(datamodule, "name", None))
        if conditional_samples and network and network.image_shape == datamodule.image_shape:
            names = model.hparams.class_names or datamodule.class_names
            metrics |= conditional_sample_accuracy(
                model, network, conditional_samples, names, max_rows
            )
    if layer_kls:
        kl_per_layer = torch.cat(layer_kls).mean(dim=0).tolist()
        metrics["test/kl_per_layer"] = [round(v, 4) for v in kl_per_layer]
        metrics["test/active_units_per_layer"] = units
    if getattr(datamodule, "labels_are_factors", False):
        settings = dict(disentanglement or {"metrics": ["mig"]})
        names = settings.pop("metrics")
        render = getattr(datamodule, "images_with_factors", None)
        represent = None
        if render is not None:

            def represent(factors: torch.Tensor) -> torch.Tensor:
                y = model.condition_of(factors.to(model.device), datamodule)
                return model.encode(render(factors).to(model.device), y)[0]

        scores = factor_metrics(
            names,
            mu,
            torch.cat(labels).cpu(),
            represent,
            getattr(datamodule, "factor_sizes", None),
            **settings,
        )
        metrics |= {f"test/{name}": value for name, value in scores.items()}
    return metrics
