"""How good generated images are, measured against real ones in the space of a feature network
(vae_lightning.features): FID, KID, and precision and recall.

    quality = SampleQuality(FASHION_MNIST.features())
    for images in real_batches: quality.update(images, real=True)
    for images in generated_batches: quality.update(images, real=False)
    quality.compute()  # {"fid_fmnist_features": ..., "kid_fmnist_features": ..., ...}

- FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018, the unbiased MMD² of a cubic
  polynomial kernel, averaged over random subsets) are torchmetrics', given the network's
  features;
- precision and recall (Kynkäänniemi et al. 2019): the fraction of generated images inside the
  real images' manifold, and of real images inside the generated ones', each manifold the union
  of balls around its points reaching their k-th nearest neighbour (k = 3).

Every name carries the feature network's (`fid_fmnist_features`, never `fid`), and the
network's test accuracy goes beside the numbers: with the shipped network they are NOT Inception
FIDs, and they compare only with numbers of the same network.
"""

import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.features import FeatureNetwork, shipped_data, shipped_features
from vae_lightning.gmm_sampler import gmm_of_checkpoint, why_no_mixture
from vae_lightning.progress import Progress

log = logging.getLogger(__name__)

NEAREST_K = 3  # Kynkäänniemi et al.'s choice
KID_SUBSET_SIZE = 1000  # torchmetrics' default; fewer images than this: all of them
KID_SUBSETS = 100
ROWS_PER_CHUNK = 1024  # rows of a distance matrix held at once (10,000 columns: 40 MB)


class _Given(nn.Module):
    """Features computed already, handed on as they are: the network runs once per image for
    FID, KID and precision/recall together (with Inception, that is the whole cost)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _distances(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    # The fast |x|² + |y|² - 2 x.y, in float64 so that its rounding (a point's distance to itself
    # comes out near 1e-8 of its norm, not 0) stays far below the gaps between neighbours.
    return torch.cdist(rows.double(), columns.double(), compute_mode="use_mm_for_euclid_dist")


def nearest_neighbour_radii(points: torch.Tensor, k: int = NEAREST_K) -> torch.Tensor:
    """The distance of each point (N, d) to its k-th nearest other point (duplicates count)."""
    return torch.cat(
        [  # the k+1-th smallest, as each point is at distance 0 from itself
            _distances(chunk, points).kthvalue(k + 1, dim=1).values
            for chunk in points.split(ROWS_PER_CHUNK)
        ]
    )


def fraction_in_manifold(points: torch.Tensor, manifold: torch.Tensor, k: int = NEAREST_K):
    """The fraction of `points` inside the k-NN manifold of `manifold`: within the k-th
    nearest-neighbour distance of at least one of its points (boundary included)."""
    radii = nearest_neighbour_radii(manifold, k)
    inside = torch.cat(
        [
            (_distances(chunk, manifold) <= radii).any(dim=1)
            for chunk in points.split(ROWS_PER_CHUNK)
        ]
    )
    return inside.double().mean().item()


def precision_recall(
    real: torch.Tensor, generated: torch.Tensor, k: int = NEAREST_K
) -> tuple[float, float]:
    """Kynkäänniemi et al.'s precision (generated inside the real manifold) and recall (real
    inside the generated manifold) of two sets of feature vectors.

    Written here rather than taken from `prdc` (Naeem et al.'s reference code), whose last
    release (0.2) dates from 2020, prints to stdout, fixes 8 worker processes, compares with a
    strict < (the paper's balls include their boundary), and holds whole N x N matrices."""
    return fraction_in_manifold(generated, real, k), fraction_in_manifold(real, generated, k)


class SampleQuality:
    """FID, KID and precision/recall of generated images against real ones, in the space of one
    feature network; images in [0, 1] (N, C, H, W), as many batches of each as wanted.
    `compute` needs at least 2 images of each kind, and more than k for precision/recall."""

    def __init__(
        self,
        network: FeatureNetwork,
        kid_subsets: int = KID_SUBSETS,
        kid_subset_size: int = KID_SUBSET_SIZE,
    ):
        self.network = network.eval()
        # One process sees every image; under DDP, torchmetrics would wait for the other ranks.
        self.fid = FrechetInceptionDistance(
            feature=_Given(network.num_features),
            normalize=True,
            reset_real_features=False,
            sync_on_compute=False,
        )
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        features = self.network(images)
        self.fid.update(features, real=real)
        self.features[real].append(features)

    def forget_generated(self) -> None:
        """Drop the generated images, keep the real ones: another sampler's images are compared
        with the same real features, computed once."""
        self.fid.reset()  # reset_real_features=False: the real images' moments stay
        self.features[False] = []

    def compute(self) -> dict[str, float]:
        """The metrics by name, with the network's test accuracy (where known) beside them."""
        real, generated = (torch.cat(self.features[kind]) for kind in (True, False))
        with warnings.catch_warnings():  # that it keeps every feature: so does precision/recall
            warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
            kid = KernelInceptionDistance(
                feature=_Given(self.network.num_features),
                subsets=self.kid_subsets,
                subset_size=min(self.kid_subset_size, len(real), len(generated)),
                normalize=True,
                sync_on_compute=False,
            )
        kid.update(real, real=True)
        kid.update(generated, real=False)
        kid_mean, kid_std = kid.compute()
        precision, recall = precision_recall(real, generated)
        name = self.network.name
        metrics = {
            f"fid_{name}": self.fid.compute().item(),
            f"kid_{name}": kid_mean.item(),
            f"kid_std_{name}": kid_std.item(),
            f"precision_{name}": precision,
            f"recall_{name}": recall,
        }
        if self.network.test_accuracy is not None:
            metrics[f"{name}_test_accuracy"] = self.network.test_accuracy
        return metrics


@torch.no_grad()
def sample_metrics(
    model, datamodule, samples_cfg, ckpt_path: str | None = None
) -> dict[str, float]:
    """The metrics of `samples_cfg.n` prior samples and as many Gaussian-mixture samples
    (gmm_sampler, `samples_cfg.gmm_components`, the mixture of `ckpt_path` or fitted now)
    against as many test images (all where the split is smaller, and then as many samples:
    precision and recall compare sets of one size), as test/<metric> and
    test/<metric>_gmm, with the feature network's test accuracy; nothing for data without a
    shipped feature network (a log line says so)."""
    data_name = datamodule.name or type(datamodule).__name__  # LightningDataModule: None
    network = shipped_features(data_name, model.image_shape)
    if network is None:
        log.info(
            "no sample metrics: the data (%s, %s) has no feature network (%s have one)",
            data_name, "x".join(map(str, model.image_shape)), shipped_data(),
        )  # fmt: skip
        return {}
    test_images = datamodule.by_batch(datamodule.split("test"))
    n, batch_size = min(samples_cfg.n, len(test_images)), samples_cfg.batch_size
    if n <= NEAREST_K:
        log.info("no sample metrics: precision/recall needs more than %d test images", NEAREST_K)
        return {}
    device = next(model.parameters()).device
    quality = SampleQuality(network.to(device))
    batches = torch.arange(n).split(batch_size)
    with Progress("features of the test images", n, "images") as progress:
        for index in batches:  # grey, as the feature network was trained, even if binarised
            quality.update(to_unit_float(test_images[index][0]).to(device), real=True)
            progress.advance(len(index))

    # (suffix of the metrics' names, what is sampled, a generator where its draws are made)
    def prior_draws(count: int, generator: torch.Generator) -> torch.Tensor:
        # a conditional model's: the classes in turn, each as often
        y = torch.arange(count, device=device) % model.n_classes if model.n_classes else None
        return model.sample(count, generator, y=y)

    samplers: list[tuple[str, str, torch.Generator, Callable]] = [
        ("", "prior", torch.Generator(device), prior_draws),
    ]
    if why_no_mixture(model) is None:
        mixture = gmm_of_checkpoint(
            model, datamodule, ckpt_path, samples_cfg.gmm_components, batch_size
        )
        samplers.append(
            (
                "_gmm",
                "Gaussian mixture",
                torch.Generator(),  # the mixture draws on the CPU, in float64
                lambda count, generator: model.decode(
                    mixture.sample(count, generator).to(device, torch.float32)
                ),
            )
        )
    metrics = {}
    for suffix, name, generator, draw in samplers:
        generator.manual_seed(samples_cfg.seed)
        with Progress(f"{name} samples and their features", n, "images") as progress:
            for index in batches:
                quality.update(draw(len(index), generator), real=False)
                progress.advance(len(index))
        torch.manual_seed(samples_cfg.seed)  # KID's random subsets
        for key, value in quality.compute().items():
            of_the_network = key.endswith("_test_accuracy")  # the same for both samplers
            metrics[f"test/{key}" if of_the_network else f"test/{key}{suffix}"] = value
        quality.forget_generated()
    return metrics
