"""The LightningModule: encoder, reparameterised sample, decoder and the beta-weighted ELBO."""

import warnings
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

from vae_lightning.elbo import ELBOTerms, build_likelihood, elbo_terms, reparameterize
from vae_lightning.networks import build_networks

# Lightning warns at every step checkpoint of a manually optimised module that it holds the
# weights after the step's update. So does automatic optimisation, and last.ckpt should: its
# global_step counts that update.
warnings.filterwarnings("ignore", "Using ModelCheckpoint with manual optimization")


class VAE(L.LightningModule):
    """A VAE with prior N(0, I), a diagonal Gaussian q(z|x) and a configurable p(x|z).

    Every constructor argument is saved in the checkpoint as plain data, so
    `VAE.load_from_checkpoint(path)` rebuilds the model with nothing else at hand (and with
    torch.load's safe `weights_only` unpickler). `optimizer` is a Hydra config of a partial
    optimiser, e.g. {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}.

    Remedies for posterior collapse, in the training loss only (validation, test and every
    reported ELBO use beta and no free bits): `kl_warmup` ramps the KL weight linearly from 0 to
    beta over that many `kl_warmup_unit` ("steps" or "epochs"); `free_bits` is a floor of that
    many nats per latent dimension on the KL term (see ELBOTerms.loss).

    training_step steps the optimiser itself (Lightning's manual optimisation): the closure
    and hooks of automatic optimisation are ~240 Python calls a step, about 1% of a step of
    pytorch/examples' MLP on a 2-core CPU (benchmarks/README.md). Gradient clipping is therefore
    `gradient_clip_val` (max norm, 0 = off) here, not the Trainer's.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        network: str = "conv",
        latent_dim: int = 10,
        hidden_dims: tuple[int, ...] = (32, 64),
        dense_dim: int = 256,
        likelihood: str = "bernoulli",
        gaussian_sigma: float = 0.1,
        gaussian_sigma_per: str = "image",
        beta: float = 1.0,
        kl_warmup: int = 0,
        kl_warmup_unit: str = "steps",
        free_bits: float = 0.0,
        gradient_clip_val: float = 0.0,
        optimizer: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.image_shape = tuple(image_shape)
        self.encoder, self.decoder = build_networks(
            network, self.image_shape, latent_dim, list(hidden_dims), dense_dim
        )
        self.likelihood = build_likelihood(
            likelihood, gaussian_sigma, self.image_shape[0], gaussian_sigma_per
        )
        self.beta = beta
        # NHWC conv weights (and inputs, in forward): faster kernels on some CPUs and GPUs
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:  # in place: the state_dict keys stay those of the plain modules
            self.encoder.compile()
            self.decoder.compile()

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets `_current_fx_name` before and after every hook it calls, about 40 times
        # a training step. nn.Module.__setattr__ first checks whether the value is a parameter,
        # module or buffer (500 Python calls a step, ~2% of a step of pytorch/examples' MLP on a
        # 2-core CPU). A hook name is none of these: it is stored as nn.Module would store it.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the decoder output for one posterior sample, and mu, log sigma^2 of q(z|x)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mu, logvar = self.encoder(x)
        return self.decoder(reparameterize(mu, logvar)), mu, logvar

    def elbo_terms(self, x: torch.Tensor) -> ELBOTerms:
        return elbo_terms(self.likelihood, x, *self(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) at z = E_q[z]: the deterministic reconstruction shown in grids."""
        mu, _ = self.encoder(x)
        return self.likelihood.mean(self.decoder(mu))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z))

    def kl_weight(self, batch_idx: int) -> float:
        """beta, ramped linearly from 0 during the KL warm-up; computed on the host, no sync."""
        warmup = self.hparams.kl_warmup
        if warmup <= 0:
            return self.beta
        if self.hparams.kl_warmup_unit == "epochs":
            progress = self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches)
        else:
            progress = self.global_step
        return self.beta * min(1.0, progress / warmup)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, beta: float, free_bits=0.0
    ) -> torch.Tensor:
        images, _ = batch
        terms = self.elbo_terms(images)
        loss = terms.loss(beta, free_bits)
        if stage == "train" and not self._logs_this_step():
            return loss
        logged = {
            f"{stage}/loss": loss,
            f"{stage}/recon": terms.recon.mean(),
            f"{stage}/kl": terms.kl.mean(),
            f"{stage}/elbo": terms.elbo.mean(),
        }
        if stage == "train":
            if self.hparams.kl_warmup > 0:  # otherwise beta is a constant, in the hparams
                logged["train/beta"] = beta
            if hasattr(self.likelihood, "sigma"):
                logged["train/gaussian_sigma"] = self.likelihood.sigma.detach().mean()
        # Logged as tensors: Lightning reduces them on its own schedule, with no host sync here.
        self.log_dict(
            logged,
            prog_bar=stage != "test",
            batch_size=images.shape[0],
            sync_dist=stage != "train",  # under DDP: val/test over all shards, not rank zero's
        )
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the trainer passes this training step's values on to the loggers (the rule of
        its `log_every_n_steps`). Only then are they logged: each self.log costs about a
        millisecond of Python, as much as a whole step of a small model, and a step's
        values that no logger is sent are never seen."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (self.global_step + 1) % every == 0)

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train", self.kl_weight(batch_idx), self.hparams.free_bits)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.hparams.gradient_clip_val > 0:
            self.clip_gradients(
                optimizer, self.hparams.gradient_clip_val, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        return loss

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", self.beta)

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test", self.beta)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.optimizer is None:
            return torch.optim.Adam(self.parameters())
        return instantiate(self.hparams.optimizer)(self.parameters())
