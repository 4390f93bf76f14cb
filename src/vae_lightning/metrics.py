"""Evaluation metrics beyond the ELBO: the IWAE estimate of the NLL, KL per latent dimension,
active units and, on data with known factors, the Mutual Information Gap.

The ELBO and its terms on the test split come from the LightningModule's own test_step (one home
for the loss); `evaluate_model` adds the rest in one pass over the test split.
"""

import math
from typing import Any

import lightning as L
import torch

from vae_lightning.elbo import iwae_bound

ACTIVITY_THRESHOLD = 0.01  # Burda et al. 2016: active when Var_x(E_q[z_d]) > 0.01
MIG_BINS = 20  # equal-width bins per latent, as in Chen et al. 2018 and disentanglement_lib


def bits_per_dim(nll_nats: float, n_dims: int) -> float:
    """Nats per image to bits per pixel value. With a continuous likelihood on values in [0, 1],
    add 8 to compare with bits/dim reported for dequantised 0..255 images."""
    return nll_nats / (n_dims * math.log(2))


def active_units(mu: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD) -> int:
    """How many latent dims have a posterior mean E_q[z_d] whose variance over the data (rows of
    mu, shape (N, D)) exceeds `threshold`; the rest are collapsed onto the prior."""
    return int((mu.var(dim=0) > threshold).sum())


def discretize(latents: torch.Tensor, n_bins: int = MIG_BINS) -> torch.Tensor:
    """Each column of (N, D) latents into n_bins equal-width bins over its own range."""
    low, high = latents.min(dim=0).values, latents.max(dim=0).values
    scaled = (latents - low) / (high - low).clamp(min=1e-12)
    return (scaled * n_bins).long().clamp(max=n_bins - 1)


def entropy(codes: torch.Tensor) -> torch.Tensor:
    """H(a) in nats of a discrete variable from its N observed integer codes."""
    p = torch.bincount(codes).double() / len(codes)
    p = p[p > 0]
    return -(p * p.log()).sum()


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """I(a; b) in nats of two discrete variables from N paired integer codes (plug-in estimate)."""
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    joint /= len(a)
    outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
    seen = joint > 0
    return (joint[seen] * (joint[seen] / outer[seen]).log()).sum()


def mig(latents: torch.Tensor, factors: torch.Tensor, n_bins: int = MIG_BINS) -> float:
    """Mutual Information Gap (Chen et al. 2018): for each factor v_k, the gap between the two
    latents most informative about it, I(z_a; v_k) - I(z_b; v_k), over H(v_k); averaged over
    the factors that vary. 1: each factor is captured by one latent alone; 0: by none, or by two
    equally. latents (N, D) continuous codes, factors (N, K) integer factor values."""
    codes = discretize(latents.double(), n_bins)
    gaps = []
    for factor in factors.long().T:
        h = entropy(factor)
        if h <= 0:
            continue
        mi = torch.stack([mutual_information(code, factor) for code in codes.T])
        top = torch.cat([mi, mi.new_zeros(1)]).topk(2).values  # a lone latent has gap I / H
        gaps.append((top[0] - top[1]) / h)
    return float(torch.stack(gaps).mean()) if gaps else float("nan")


@torch.no_grad()
def evaluate_model(
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    iwae_k: int,
    max_rows: int = 8192,
    device: torch.device | str = "cpu",
    max_batches: int | float = float("inf"),
) -> dict[str, Any]:
    """test/iwae_nll (nats/image), test/iwae_bpd, test/kl_per_dim, test/active_units, the number
    of test/images they are computed on and, when
    the data's labels are factors of variation, test/mig, all on the test split (its first
    `max_batches` batches: the Trainer's limit_test_batches, so a smoke run stays short).

    A plain loop rather than trainer.test: active units and MIG need the posterior means of the
    whole split at once, which per-batch logging would average away.
    """
    model.to(device).eval()
    datamodule.setup("test")
    iwae, mus, kls, labels = [], [], [], []
    for index, batch in enumerate(datamodule.test_dataloader()):
        if index >= max_batches:
            break
        batch = datamodule.transfer_batch_to_device(batch, model.device, 0)
        images, batch_labels = datamodule.on_after_batch_transfer(batch, 0)
        draws = lambda n, images=images: model.log_importance_weights(images, n)[0]  # noqa: E731
        iwae.append(iwae_bound(draws, iwae_k, len(images), max_rows))
        mus.append(model.encode(images)[0])
        kls.append(model.kl_per_dim(images))
        labels.append(batch_labels)
    nll = -torch.cat(iwae).mean().item()
    mu = torch.cat(mus).cpu()
    metrics: dict[str, Any] = {
        "test/iwae_nll": nll,
        "test/iwae_bpd": bits_per_dim(nll, math.prod(images.shape[1:])),
        "test/iwae_k": iwae_k,
        "test/images": len(mu),
        "test/active_units": active_units(mu),
        "test/kl_per_dim": [round(v, 4) for v in torch.cat(kls).mean(dim=0).tolist()],
    }
    if getattr(datamodule, "labels_are_factors", False):
        metrics["test/mig"] = mig(mu, torch.cat(labels).cpu())
    return metrics
