"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): the ELBO plus gamma times the
total correlation TC = KL(q(z) || prod_d q(z_d)) of the aggregate posterior, estimated with the
density-ratio trick: a discriminator D learns to tell samples of q(z) from samples of
prod_d q(z_d), and TC ~= E_q(z)[log D(z) / (1 - D(z))], the mean logit difference.

Samples of prod_d q(z_d) come from `permute_dims`: each latent dim shuffled independently
across the batch, which keeps every marginal and destroys the dependence between dims.

One objective, two networks, one backward pass: the VAE's TC term reads the discriminator
through detached parameters (no gradient to D), and the discriminator's loss reads detached
samples z (no gradient to the VAE). The sum of the two losses therefore gives each network the
gradient of its own loss only, so it trains under Lightning's automatic optimisation with the
discriminator in its own optimiser parameter group (`param_groups`).
"""

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vae_lightning.checks import is_number, non_negative, positive, positive_int, require
from vae_lightning.elbo import ELBOTerms
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState

REAL, PERMUTED = 0, 1  # the discriminator's two classes: a sample of q(z), or of prod_d q(z_d)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z (B, D) with each column permuted independently across the batch (Kim & Mnih, Alg. 1)."""
    noise = torch.rand(z.shape, generator=generator, device=z.device)
    return z.gather(0, noise.argsort(dim=0))


def build_discriminator(latent_dim: int, hidden: int = 1000, layers: int = 6) -> nn.Sequential:
    """An MLP D(z) -> 2 logits (REAL, PERMUTED): `layers` hidden layers of `hidden` units with
    LeakyReLU(0.2), the paper's architecture for every data set (6 x 1000)."""
    widths = [latent_dim] + [hidden] * layers
    blocks: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        blocks += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks, nn.Linear(widths[-1], 2))


def tc_estimate(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample log D(z) / (1 - D(z)) = logit_REAL - logit_PERMUTED; its mean over z ~ q(z)
    estimates the TC when D is the optimal discriminator."""
    return logits[:, REAL] - logits[:, PERMUTED]


def discriminator_loss(
    discriminator: nn.Module, z: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cross-entropy of D on samples of q(z) labelled REAL and samples of prod_d q(z_d) labelled
    PERMUTED, and D's accuracy on them; z is detached, so only D gets gradients.

    The paper draws the permuted samples from a second batch; here the batch is split in two
    halves instead: the first half is the REAL set, the permuted second half the PERMUTED one (a
    row of the batch is never both). An odd last row is left out, so a batch of one has no
    pair to compare: None (D learns nothing from it; permuting one row would give the row itself,
    a REAL sample labelled PERMUTED).
    """
    z = z.detach()
    half = len(z) // 2
    if half < 1:
        return None
    inputs = torch.cat([z[:half], permute_dims(z[half : 2 * half], generator)])
    labels = torch.cat(
        [
            z.new_full((half,), REAL, dtype=torch.long),
            z.new_full((half,), PERMUTED, dtype=torch.long),
        ]
    )
    logits = discriminator(inputs)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return F.cross_entropy(logits, labels), accuracy


class FactorVAELosses(NamedTuple):
    vae_loss: torch.Tensor
    discriminator_loss: torch.Tensor
    terms: ELBOTerms
    logged: dict[str, torch.Tensor]


def _check(**checks: tuple[Any, bool, str]) -> None:
    for name, (value, ok, allowed) in checks.items():
        require(ok, f"model.objective.{name}", value, allowed)


class FactorVAE(Objective):
    """VAE loss = recon + kl_weight * KL (ELBOTerms.loss: warm-up and free bits apply) + gamma *
    TC estimate; discriminator loss = `discriminator_loss`; forward returns their sum.

    Defaults from Kim & Mnih 2018: gamma = 35 (their dSprites setting; they compare gamma in
    10..100, disentanglement_lib sweeps 10..100 too), the 6 x 1000 LeakyReLU discriminator,
    trained with Adam(lr 1e-4, betas (0.5, 0.9)); the VAE's own optimiser is the model's
    (the paper: Adam(lr 1e-4, betas (0.9, 0.999))).
    Logged: "tc", "discriminator_loss", "discriminator_accuracy", "vae_loss" (the
    discriminator's two not for a batch of one, which it cannot learn from: its loss is then 0,
    and an epoch's means are over the batches it saw).
    """

    def __init__(
        self,
        latent_dim: int,
        gamma: float = 35.0,
        discriminator_hidden: int = 1000,
        discriminator_layers: int = 6,
        discriminator_lr: float = 1e-4,
        discriminator_betas: tuple[float, float] = (0.5, 0.9),
    ):
        super().__init__()
        betas = tuple(discriminator_betas)
        _check(
            latent_dim=(latent_dim, positive_int(latent_dim), "a positive integer"),
            gamma=(gamma, non_negative(gamma), "a number >= 0, e.g. 35"),
            discriminator_hidden=(
                discriminator_hidden,
                positive_int(discriminator_hidden),
                "e.g. 1000",
            ),
            discriminator_layers=(
                discriminator_layers,
                positive_int(discriminator_layers),
                "e.g. 6",
            ),
            discriminator_lr=(discriminator_lr, positive(discriminator_lr), "a number > 0"),
            discriminator_betas=(
                list(betas),
                len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
                "two numbers in [0, 1), e.g. [0.5,0.9]",
            ),
        )
        self.gamma = gamma
        self.discriminator_lr = discriminator_lr
        self.discriminator_betas = betas
        self.discriminator = build_discriminator(
            latent_dim, discriminator_hidden, discriminator_layers
        )

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "params": list(self.discriminator.parameters()),
                "lr": self.discriminator_lr,
                "betas": self.discriminator_betas,
            }
        ]

    def frozen_discriminator(self, z: torch.Tensor) -> torch.Tensor:
        """D(z) with D's parameters detached: gradients reach z (the VAE), never D."""
        detached = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        detached.update(dict(self.discriminator.named_buffers()))
        return functional_call(self.discriminator, detached, (z,))

    def losses(self, model: Any, x: torch.Tensor, state: TrainingState) -> FactorVAELosses:
        """The two losses separately (forward sums them); for tests and manual optimisation."""
        terms = model.elbo_terms(x)
        tc = tc_estimate(self.frozen_discriminator(terms.z)).mean()
        vae_loss = terms.loss(state.kl_weight, state.free_bits) + self.gamma * tc
        logged = {"tc": tc.detach(), "vae_loss": vae_loss.detach()}
        discriminator = discriminator_loss(self.discriminator, terms.z)
        if discriminator is None:  # a batch of one: nothing for D, and nothing of D to log
            return FactorVAELosses(vae_loss, vae_loss.new_zeros(()), terms, logged)
        disc_loss, accuracy = discriminator
        logged |= {"discriminator_loss": disc_loss.detach(), "discriminator_accuracy": accuracy}
        return FactorVAELosses(vae_loss, disc_loss, terms, logged)

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        vae_loss, disc_loss, terms, logged = self.losses(model, x, state)
        return ObjectiveOutput(vae_loss + disc_loss, terms, logged)
