"""The interface every training objective implements (see the package docstring)."""

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vae_lightning.elbo import ELBOTerms


@dataclass(frozen=True)
class TrainingState:
    """What an objective may need to know about training beyond the batch.

    kl_weight: the KL weight after warm-up (beta once it is over); free_bits: nats per latent
    dimension (0: off); step: optimiser steps so far (annealing schedules); dataset_size: the
    number of training images (minibatch-weighted sampling of q(z)).
    """

    kl_weight: float = 1.0
    free_bits: float = 0.0
    step: int = 0
    dataset_size: int = 1


@dataclass
class ObjectiveOutput:
    """loss: the scalar loss of the batch; terms: the single-sample ELBO terms when the objective
    computed them (the module logs recon, kl and elbo from them, and computes them itself for
    val/test when they are missing); logged: further named scalars to log (no stage prefix,
    e.g. {"tc": ...})."""

    loss: torch.Tensor
    terms: ELBOTerms | None = None
    logged: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """forward(model, x, state) -> ObjectiveOutput for the batch x.

    An nn.Module, so an objective with its own networks (FactorVAE's discriminator) keeps them
    in the model's state_dict and checkpoint. `param_groups(model)` lists extra optimiser
    parameter groups (dicts as torch.optim takes them) for those networks; their parameters
    are then left out of the model's own group. `needs_dataset_size`: the objective reads
    TrainingState.dataset_size, so training refuses data whose size is unknown.
    """

    needs_dataset_size: bool = False

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        return []
