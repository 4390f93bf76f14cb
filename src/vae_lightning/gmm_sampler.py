"""The ex-post Gaussian mixture sampler of Ghosh et al. (2020), as pythae's GaussianMixtureSampler:
a mixture of full-covariance Gaussians fitted on the posterior means of the training images (the
codes their reconstructions decode), drawn from in place of the prior and decoded. A VAE's
aggregate posterior rarely fills its prior; the mixture puts the draws where the decoder has seen
codes.

The fitted mixture is saved beside the checkpoint it was fitted for as plain tensors
(`<checkpoint>.gmm.safetensors`: loading it runs no code), with the checkpoint's SHA-256, so that
a later call reuses it only for the same weights and refits it otherwise.
"""

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sklearn.mixture import GaussianMixture

from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.progress import Progress

log = logging.getLogger(__name__)

F64 = torch.float64


class GaussianMixtureSampler:
    """A mixture of `len(weights)` Gaussians: weights (K,), means (K, D), covariances (K, D, D)."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor):
        self.weights, self.means = weights.to(F64), means.to(F64)
        self.covariances = covariances.to(F64)
        self.cholesky = torch.linalg.cholesky(self.covariances)

    @classmethod
    def fit(cls, latents: torch.Tensor, n_components: int, seed: int = 0):
        """scikit-learn's EM fit, k-means initialised from `seed`, on points (N, D)."""
        mixture = GaussianMixture(n_components, covariance_type="full", random_state=seed)
        mixture.fit(latents.double().numpy())
        return cls(*map(torch.from_numpy, (mixture.weights_, mixture.means_, mixture.covariances_)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, D) in float64: a component by its weight, then its Gaussian."""
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], 1, dtype=F64, generator=generator)
        return self.means[components] + (self.cholesky[components] @ noise).squeeze(-1)

    def save(self, path: Path, checkpoint_sha256: str) -> None:
        tensors = {"weights": self.weights, "means": self.means, "covariances": self.covariances}
        save_file(tensors, path, metadata={"checkpoint_sha256": checkpoint_sha256})

    @classmethod
    def load(cls, path: Path) -> tuple["GaussianMixtureSampler", str]:
        """The mixture of a file written by `save`, and the SHA-256 of its checkpoint."""
        with safe_open(path, framework="pt") as file:
            tensors = {name: file.get_tensor(name) for name in ("weights", "means", "covariances")}
            checkpoint_sha256 = (file.metadata() or {}).get("checkpoint_sha256")
        return cls(**tensors), checkpoint_sha256


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def gmm_path(ckpt_path: str | Path) -> Path:
    """Where the mixture of a checkpoint is kept: `checkpoints/last.ckpt` ->
    `checkpoints/last.gmm.safetensors`."""
    ckpt = Path(ckpt_path)
    return ckpt.with_name(f"{ckpt.stem}.gmm.safetensors")


def why_no_mixture(model) -> str | None:
    """Why a Gaussian mixture of the posterior's codes cannot sample `model`, or None: a
    VQ-VAE's code maps come from its learned prior, and a conditional decoder needs one class,
    which a mixture of every class's codes does not name."""
    if not model.posterior.traversable:
        return "a VQ-VAE draws its code maps from its prior (model=vqvae_prior)"
    if model.n_classes:
        return "the mixture is of every class's codes; a conditional decoder needs one"
    return None


@torch.no_grad()
def posterior_means(model, datamodule, batch_size: int) -> torch.Tensor:
    """The posterior's mean z (N, D) of every training image, the code its reconstruction
    decodes, as the model sees the image at evaluation (the fixed binarisation of binarised
    data), on the model's device. Not `encode`'s mu: a flow posterior (IAF) moves the base
    Gaussian's mean, and the mixture must sit where the decoder reads codes."""
    images = datamodule.by_batch(datamodule.split("train"))
    device = next(model.parameters()).device
    means = []
    with Progress("posterior means of the training images", len(images), "images") as progress:
        for index in torch.arange(len(images)).split(batch_size):
            x = datamodule.model_input(to_unit_float(images[index][0]), training=False)
            means.append(model.posterior_mean(x.to(device)).cpu())
            progress.advance(len(index))
    return torch.cat(means)


def gmm_of_checkpoint(
    model, datamodule, ckpt_path: str | Path | None, n_components: int, batch_size: int = 500
) -> GaussianMixtureSampler:
    """The mixture saved beside `ckpt_path` for these very weights (its SHA-256) with
    `n_components`; else one fitted now on the training images' posterior means and saved there
    (not saved without a checkpoint: the weights in memory have no file to go beside)."""
    path = gmm_path(ckpt_path) if ckpt_path else None
    checkpoint_sha256 = sha256_of(ckpt_path) if ckpt_path else ""
    if path is not None and path.is_file():
        try:
            saved, saved_for = GaussianMixtureSampler.load(path)
        except (SafetensorError, RuntimeError) as error:  # not a mixture: it is refitted
            saved, saved_for = None, f"unreadable ({type(error).__name__})"
        if saved_for == checkpoint_sha256 and len(saved.weights) == n_components:
            log.info("the Gaussian mixture sampler of %s", path)
            return saved
        log.info("refitting %s: it is unreadable, or of other weights or components", path)
    latents = posterior_means(model, datamodule, batch_size)
    log.info(
        "fitting a %d-component Gaussian mixture to %d posterior means", n_components, len(latents)
    )
    mixture = GaussianMixtureSampler.fit(latents, n_components)
    if path is not None:
        mixture.save(path, checkpoint_sha256)
        log.info("the Gaussian mixture sampler written to %s", path)
    return mixture
