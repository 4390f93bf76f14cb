"""p(x|z) = Bernoulli per pixel: binary images, or grey values in [0, 1] read as probabilities."""

import torch
import torch.nn.functional as F

from vae_lightning.elbo import PIXEL_DIMS
from vae_lightning.likelihoods import Likelihood


class Bernoulli(Likelihood):
    """p(x|z) = Bernoulli(sigmoid(logits)) per pixel; x may be grey values in [0, 1]."""

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) = x l - softplus(l): stable for any l,
        # cheaper than BCE-with-logits, and x broadcasts over leading sample dims uncopied.
        return (x * logits).sum(PIXEL_DIMS) - F.softplus(logits).sum(PIXEL_DIMS)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)
