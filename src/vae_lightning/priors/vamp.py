"""The VampPrior (Tomczak & Welling 2018): a mixture of the model's own posteriors at learned
pseudo-inputs."""

import math
from collections.abc import Callable

import torch
from torch import nn

from vae_lightning.checks import positive_int, require
from vae_lightning.elbo import LOG_2PI, diagonal_gaussian_log_prob
from vae_lightning.priors import Prior

# Elements of one (rows, K, D) block in VampPrior.kl_per_dim: bounds its memory for any batch.
PER_DIM_BLOCK_ELEMENTS = 2**24
# Spread of the pseudo-inputs' initial logits: mid-grey images, distinct enough that the
# mixture's components differ from the first step.
PSEUDO_INPUT_INIT_LOGIT_STD = 0.5


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior"):

        p(z) = (1/K) sum_k q(z | u_k),

    the aggregate posterior of K learned pseudo-inputs u_k, each image-shaped. It is learned with
    the model and shares the encoder, so it follows the posteriors instead of pulling them
    towards a fixed N(0, I). It has no closed-form KL to q(z|x): `kl` is the Monte Carlo
    estimate log q(z|x) - log p(z) at the posterior's sample(s).

    `encode` is the model's encoder, images (N, C, H, W) in [0, 1] -> (mu, logvar) (N, D). It is
    held as a plain attribute, never registered as a submodule: the encoder's parameters are the
    model's, so the prior's state_dict holds only `pseudo_input_logits`, and the encoder is not
    counted twice in parameters() or checkpoints. A bound method of the owning model is the
    usual `encode`; deepcopy and pickle of the owner then keep it pointing at the (copied) owner.

    Parameterisation: the pseudo-inputs are u = sigmoid(pseudo_input_logits), so they are always
    valid images in (0, 1) and every pixel gets a gradient. (The paper's code clips with
    hardtanh(0, 1) instead, whose gradient is zero outside [0, 1], so a pixel pushed past a
    bound stops learning.) The logits start at N(0, 0.5^2): pseudo-inputs near mid-grey with a
    small spread, drawn from torch's global RNG.

    Encoding the K pseudo-inputs happens at every `log_prob`, `sample`, `kl` and `kl_per_dim`
    call, in the encoder's current mode (an encoder with batch norm would see the pseudo-inputs
    as a batch of their own in training).
    """

    analytic_kl = False

    def __init__(
        self,
        encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        image_shape: tuple[int, int, int],
        latent_dim: int,
        n_pseudo_inputs: int = 500,
    ):
        super().__init__()
        require(
            positive_int(n_pseudo_inputs),
            "model.prior.n_pseudo_inputs",
            n_pseudo_inputs,
            "a positive integer, e.g. 500",
        )
        # object.__setattr__ bypasses nn.Module's registration even when encode is a Module.
        object.__setattr__(self, "encode", encode)
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.n_pseudo_inputs = n_pseudo_inputs
        self.pseudo_input_logits = nn.Parameter(
            PSEUDO_INPUT_INIT_LOGIT_STD * torch.randn(n_pseudo_inputs, *self.image_shape)
        )

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k as images (K, C, H, W) in (0, 1)."""
        return torch.sigmoid(self.pseudo_input_logits)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and logvar (K, D) of the mixture's components q(z | u_k)."""
        return self.encode(self.pseudo_inputs)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z | u_k) - log K, (..., D) -> (...), in z's dtype.

        Memory-light: the diagonal Gaussian exponent sum_d (z_d - m_kd)^2 / v_kd is expanded into
        (z^2) @ (1/v)^T - 2 z @ (m/v)^T + sum_d m_kd^2 / v_kd, two matrix products giving
        (rows, K) directly, so (rows, K, D) is never formed: 8192 rows against K = 500 components
        in D = 50 need a (8192, 500) matrix, not 200 million elements. The expansion loses some
        precision to cancellation where |z| is large against a component's spread; in float32
        that is about 1e-7 of sum_d z_d^2 / v_kd, far below the Monte Carlo noise of any estimate
        built on it.
        """
        mu, logvar = (t.to(z.dtype) for t in self.components())
        precision = (-logvar).exp()
        rows = z.reshape(-1, z.shape[-1])
        constant = (mu.pow(2) * precision + logvar).sum(-1) + z.shape[-1] * LOG_2PI  # (K,)
        exponent = rows.pow(2) @ precision.T - 2 * rows @ (mu * precision).T + constant
        log_mixture = torch.logsumexp(-0.5 * exponent, dim=-1) - math.log(len(mu))
        return log_mixture.view(z.shape[:-1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, latent_dim): a component k uniform at random, then z ~ q(z | u_k)."""
        mu, logvar = self.components()
        picked = torch.randint(len(mu), (n,), generator=generator, device=mu.device)
        noise = torch.randn(n, mu.shape[-1], generator=generator, dtype=mu.dtype, device=mu.device)
        return mu[picked] + noise * (0.5 * logvar[picked]).exp()

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Monte Carlo KL(q(z|x) || p(z)) = log q(z|x) - log p(z) at the posterior sample(s) z:
        (B, D) -> (B,), or (S, B, D) -> (S, B) for S samples per image (mu, logvar (B, D))."""
        return diagonal_gaussian_log_prob(z, mu, logvar) - self.log_prob(z)

    def kl_per_dim(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-dimension Monte Carlo KL(q(z_d|x) || p_d(z_d)) at z, shaped like z (..., D).

        p_d is the prior's marginal in dimension d, the 1-D mixture (1/K) sum_k N(m_kd, v_kd).
        The VampPrior is not factorised, so these do not sum to `kl` in general (their sum
        ignores how p(z) couples the dimensions); they serve the per-dimension KL chart, active
        units and free bits.
        """
        log_q = -0.5 * ((z - mu).pow(2) * (-logvar).exp() + logvar + LOG_2PI)
        return log_q - self.log_marginals(z)

    def log_marginals(self, z: torch.Tensor) -> torch.Tensor:
        """log p_d(z_d) for each dimension d, shaped like z (..., D); in blocks of rows, so the
        (rows, K, D) densities it needs take bounded memory for any number of rows."""
        mu, logvar = (t.to(z.dtype) for t in self.components())
        precision = (-logvar).exp()
        rows = z.reshape(-1, z.shape[-1])
        block_rows = max(1, PER_DIM_BLOCK_ELEMENTS // mu.numel())
        blocks = []
        for block in rows.split(block_rows):
            log_density = -0.5 * ((block[:, None] - mu).pow(2) * precision + logvar + LOG_2PI)
            blocks.append(torch.logsumexp(log_density, dim=1))
        return (torch.cat(blocks) - math.log(len(mu))).view(z.shape)
