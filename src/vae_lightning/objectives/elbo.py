"""The beta-weighted single-sample ELBO: today's loss and the default objective."""

from typing import Any

import torch

from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState


class ELBO(Objective):
    """loss = recon + kl_weight * KL, averaged over the batch (ELBOTerms.loss: free bits too)."""

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        terms = model.elbo_terms(x)
        return ObjectiveOutput(terms.loss(state.kl_weight, state.free_bits), terms)
