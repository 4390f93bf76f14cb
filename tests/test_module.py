"""The LightningModule: its public API, the KL schedule and remedies in training, and the Trainer
options a Lightning user expects (clipping, accumulation, schedulers), each through train()."""

import math

import lightning as L
import pytest
import torch

from tests.helpers import part, read_tensorboard
from vae_lightning.cli import train
from vae_lightning.elbo import gaussian_kl
from vae_lightning.module import VAE

pytestmark = pytest.mark.slow


def test_public_api_shapes_and_channels_last_inputs():
    torch.manual_seed(0)
    network = part("network", "conv", hidden_dims=[4, 8], dense_dim=16)
    model = VAE((3, 16, 16), network=network, latent_dim=5, channels_last=True)
    x = torch.rand(6, 3, 16, 16)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 5)
    assert model.decode(mu).shape == model.reconstruct(x).shape == x.shape
    torch.testing.assert_close(model.reconstruct(x), model.decode(mu))
    samples = model.sample(4, torch.Generator().manual_seed(1))
    assert samples.shape == (4, 3, 16, 16) and 0 <= samples.min() <= samples.max() <= 1
    torch.testing.assert_close(samples, model.sample(4, torch.Generator().manual_seed(1)))
    # the standard prior's KL per dimension is the closed form, and adds up to the ELBO's KL
    torch.testing.assert_close(model.kl_per_dim(x).sum(dim=-1), gaussian_kl(mu, logvar))
    torch.testing.assert_close(
        model.kl_per_dim(x).sum(dim=-1).mean(), model.elbo_terms(x).kl.mean()
    )
    # one layer: posterior_by_layer is the posterior mean and the KL per dimension, from one pass
    (layer,) = model.posterior_by_layer(x)
    torch.testing.assert_close(layer.mean, mu)
    torch.testing.assert_close(layer.kl_per_dim, model.kl_per_dim(x))


def scalars(events, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_kl_warmup_in_steps_ramps_beta_linearly(tmp_path, tiny_config):
    train(
        tiny_config(
            "model.kl_warmup=4",
            "model.beta=2",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=6",
            "+trainer.limit_val_batches=1",
        )
    )
    beta = scalars(read_tensorboard(tmp_path / "tensorboard"), "train/beta")
    assert beta == pytest.approx({step: 2 * min(1, step / 4) for step in range(6)})


def test_free_bits_epoch_warmup_and_learned_sigma_in_training(tmp_path, tiny_config):
    free_bits, latent_dim = 1.0, 4
    metrics = train(
        tiny_config(
            "model.likelihood=gaussian_learned",
            "model.likelihood.per=channel",
            "model.kl_warmup=2",
            "model.kl_warmup_unit=epochs",
            f"model.free_bits={free_bits}",
        )
    )
    events = read_tensorboard(tmp_path / "tensorboard")
    beta, loss, recon, kl, elbo = (
        scalars(events, f"train/{name}") for name in ("beta", "loss", "recon", "kl", "elbo")
    )
    # 16 batches per epoch, warm-up over 2 epochs: beta = step / 32.
    assert beta == pytest.approx({step: step / 32 for step in range(32)})
    floored = 0
    for step in loss:
        kl_term = loss[step] - recon[step]  # beta * sum_d max(free_bits, batch-mean KL_d)
        assert kl_term >= beta[step] * max(kl[step], latent_dim * free_bits) - 1e-3
        floored += kl_term > beta[step] * kl[step] + 1e-3
        assert elbo[step] == pytest.approx(-(recon[step] + kl[step]), abs=1e-3)  # no floor
    assert floored > 0
    # validation: the full beta (1), no free bits
    val = {name: scalars(events, f"val/{name}") for name in ("loss", "recon", "kl")}
    for step, value in val["loss"].items():
        assert value == pytest.approx(val["recon"][step] + val["kl"][step], rel=1e-5)

    sigma = scalars(events, "train/gaussian_sigma")
    assert sigma[0] == pytest.approx(0.1, rel=1e-5) and abs(sigma[max(sigma)] - 0.1) > 1e-3
    model = VAE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.likelihood.sigma.shape == (1, 1, 1)  # one channel
    assert model.likelihood.sigma.item() == pytest.approx(sigma[max(sigma)], abs=5e-4)
    assert math.isfinite(metrics["test/iwae_nll"])


class OptimizerSteps(L.Callback):
    """Records, for each optimiser step, the total gradient norm the step applied, after any
    clipping: read by a hook the optimiser runs after its step (under automatic optimisation the
    gradients are computed inside step(closure), so a pre-step hook would see none)."""

    runs: list["OptimizerSteps"] = []

    def __init__(self):
        self.norms: list[float] = []
        OptimizerSteps.runs.append(self)

    def on_train_start(self, trainer, pl_module):
        def record(optimizer, args, kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
            norms = torch.stack([g.norm() for g in grads if g is not None])
            self.norms.append(torch.linalg.vector_norm(norms).item())

        trainer.optimizers[0].register_step_post_hook(record)


RECORD = "+callbacks.optimizer_steps._target_=tests.test_module.OptimizerSteps"


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_trainer_gradient_clipping_bounds_the_norm_of_each_step(tiny_config, clip):
    metrics = train(
        tiny_config(RECORD, f"trainer.gradient_clip_val={clip}", "trainer.max_epochs=1")
    )
    norms = OptimizerSteps.runs[-1].norms
    assert len(norms) == metrics["steps"] == 16
    if clip:  # every raw norm is far above 1e-3, so each step is scaled down to exactly the bound
        assert all(norm == pytest.approx(clip, rel=1e-4) for norm in norms)
    else:
        assert min(norms) > 100 * 1e-3


def test_trainer_accumulates_gradients_over_batches(tiny_config):
    metrics = train(tiny_config(RECORD, "trainer.accumulate_grad_batches=4"))
    # 2 epochs of 16 batches: one optimiser step per 4 batches
    assert metrics["steps"] == len(OptimizerSteps.runs[-1].norms) == 8


def test_cosine_schedule_is_followed_and_logged(tmp_path, tiny_config):
    train(tiny_config("model/scheduler=cosine", "trainer.max_epochs=4"))
    events = read_tensorboard(tmp_path / "tensorboard")
    lr = [event.value for event in events.Scalars("lr-Adam")]
    expected = [1e-3 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert lr == pytest.approx(expected, rel=1e-5)
    model = VAE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.hparams.scheduler["scheduler"]["T_max"] == 4  # the config, resolved and saved
