"""How good generated images are, measured against real ones in the space of a feature network
(vae_lightning.features): FID, KID, and precision and recall.

    quality = SampleQuality(fashion_mnist_features())
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

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from vae_lightning.features import FeatureNetwork

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
        self.fid = FrechetInceptionDistance(feature=_Given(network.num_features), normalize=True)
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        features = self.network(images)
        self.fid.update(features, real=real)
        self.features[real].append(features)

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
