"""The conditional VAE (model.condition=label, issue #28): checked against a linear-Gaussian
model whose log p(x|y) and p(z|x,y) are exact, then trained on real Fashion-MNIST images through
train.py's function, sampled by class with sample.py, evaluated with eval.py and exported."""

import json

import pytest
import torch
from PIL import Image
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from tests.helpers import (
    DX,
    DZ,
    F64,
    FASHION_MNIST_SUBSET,
    SIGMA,
    LinearGaussian,
    make_config,
    part,
    run_script,
)
from vae_lightning.cli import train
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.runs import load_checkpoint_model

# ---- exact: a linear-Gaussian model with a condition --------------------------------------------
# z ~ N(0, I), x = W z + b + B onehot(y) + sigma * eps: given y, the linear-Gaussian model of
# tests/helpers.py with the bias b + B[:, y], so log p(x|y) and p(z|x,y) are exact.

K = 3  # classes


class ConditionalLinearGaussian(LinearGaussian):
    def __init__(self, seed: int):
        super().__init__(seed, orthogonal=True)  # a diagonal exact posterior: q can equal it
        self.class_bias = 3 * torch.randn(DX, K, generator=self.generator, dtype=F64)

    def bias(self, y: int) -> torch.Tensor:
        return self.b + self.class_bias[:, y]

    def log_pxy(self, y: int) -> float:
        cov = self.w @ self.w.T + SIGMA**2 * torch.eye(DX, dtype=F64)
        return MultivariateNormal(self.bias(y), cov).log_prob(self.x).item()

    def exact_posterior(self, y: int) -> Normal:
        slope, cov = self.posterior_map()
        return Normal(slope @ (self.x - self.bias(y)), cov.diagonal().sqrt())

    def vae(self, shift: torch.Tensor, variance_scale: float) -> VAE:
        """The project's conditional VAE with this decoder and the encoder q(z|x,y) = the exact
        posterior's mean + shift, its variances times variance_scale: the encoder reads the
        class from the one-hot channels the network adds to its input."""
        model = VAE((1, 1, DX), network=part("network", "mlp", hidden_dims=[4]), latent_dim=DZ,
                    likelihood=part("likelihood", "gaussian", sigma=SIGMA),
                    condition="label", n_classes=K)  # fmt: skip
        decoder = nn.Linear(DZ + K, DX).double()  # z and onehot(y), side by side
        decoder.weight.data = torch.cat([self.w, self.class_bias], dim=1)
        decoder.bias.data = self.b.clone()
        model.network.decoder = nn.Sequential(decoder, nn.Unflatten(1, (1, 1, DX)))
        slope, cov = self.posterior_map()
        logvar = (variance_scale * cov.diagonal()).log()

        class Encoder(nn.Module):
            def forward(encoder, inputs: torch.Tensor) -> torch.Tensor:
                x, one_hot = inputs[:, 0, 0], inputs[:, 1:, 0, 0]  # (N, DX), (N, K)
                mu = (x - self.b - one_hot @ self.class_bias.T) @ slope.T + shift
                return torch.cat([mu, logvar.expand(len(x), DZ)], dim=-1)

        model.network.encoder = Encoder()
        return model


@pytest.mark.parametrize("seed", range(3))
def test_log_pxy_is_elbo_plus_kl_to_the_exact_posterior_at_every_draw(seed):
    """log p(x,z|y) - log q(z|x,y) = log p(x|y) - [log q(z|x,y) - log p(z|x,y)] at every z: its
    mean over q is ELBO = log p(x|y) - KL(q || p(z|x,y)), so this holds exactly, draw by draw,
    for the module's own importance weights of each class."""
    torch.manual_seed(seed)
    model = ConditionalLinearGaussian(seed)
    shift = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    vae = model.vae(shift, variance_scale=2.0)
    for y in range(K):
        log_w, z = vae.log_importance_weights(model.x.view(1, 1, 1, DX), 200, y=torch.tensor([y]))
        post = model.exact_posterior(y)
        q = Normal(post.mean + shift, post.stddev * 2**0.5)
        gap = q.log_prob(z[:, 0]).sum(-1) - post.log_prob(z[:, 0]).sum(-1)
        torch.testing.assert_close(log_w[:, 0], model.log_pxy(y) - gap, atol=1e-9, rtol=0)
        assert gap.mean() > 0.05  # a real gap: q is not the posterior
    assert len({round(model.log_pxy(y), 3) for y in range(K)}) == K  # the classes differ


def test_the_elbo_is_log_pxy_when_q_is_the_exact_posterior():
    model = ConditionalLinearGaussian(0)
    vae = model.vae(torch.zeros(DZ, dtype=F64), variance_scale=1.0)
    x = model.x.view(1, 1, 1, DX).expand(K, 1, 1, DX)
    log_w, _ = vae.log_importance_weights(x, 50, y=torch.arange(K))
    expected = torch.tensor([model.log_pxy(y) for y in range(K)], dtype=F64)
    # every importance weight p(x, z|y) / q(z|x,y) is p(x|y) itself, each class its own
    torch.testing.assert_close(log_w, expected.expand(50, K), atol=1e-9, rtol=0)


def test_a_conditional_model_refuses_to_run_without_its_classes():
    vae = ConditionalLinearGaussian(0).vae(torch.zeros(DZ, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="needs y, the class index of each image"):
        vae.sample(4)


# ---- end to end on real Fashion-MNIST images ----------------------------------------------------


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    """A conditional VAE trained a few steps on the Fashion-MNIST subset by train.py's function:
    its run directory and metrics."""
    run_dir = tmp_path_factory.mktemp("cvae")
    cfg = make_config(
        run_dir, "data=fashion_mnist", f"data.root={FASHION_MNIST_SUBSET}", "data.size=320",
        f"data.cache_dir={run_dir / 'cache'}", "model.condition=label", "trainer.max_epochs=1",
        "eval.iwae_k=4", "eval.conditional_samples=20",
        "callbacks.pictures.image_grids.n_samples=20",
    )  # fmt: skip
    (run_dir / ".hydra").mkdir()  # as Hydra saves it: sample.py's other modes read the data
    (run_dir / ".hydra" / "config.yaml").write_text(json.dumps({"data": dict(cfg.data)}))
    return run_dir, train(cfg)


def test_train_reports_conditional_accuracy_beside_the_classifiers_own(cvae_run):
    run_dir, metrics = cvae_run
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/conditioned_on"] == "label"  # test/iwae_nll is of log p(x|y)
    assert 0 <= metrics["test/conditional_accuracy"] <= 1
    per_class = [metrics[f"test/conditional_accuracy/{name}"] for name in ("Sneaker", "Bag")]
    assert all(0 <= value <= 1 for value in per_class)
    assert metrics["test/classifier_test_accuracy"] > 0.85  # the shipped classifier's record
    # the sample grid: 20 samples as a row of 2 for each of the 10 classes (29 pixels a tile)
    samples = Image.open(run_dir / "images" / "samples_epoch_000.png")
    assert samples.size == (2 * 29 + 1, 10 * 29 + 1)


def test_sample_py_draws_the_class_a_label_names(cvae_run, tmp_path):
    run_dir, metrics = cvae_run
    ckpt = metrics["best_checkpoint"]
    result = run_script("sample.py", f"ckpt_path={ckpt}", "label=sneaker", "n=5", f"out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "prior.png").size == (5 * 29 + 1, 29 + 1)
    # the sneakers are the model's samples of class 7, drawn from the same seed
    model = load_checkpoint_model(ckpt)
    torch.manual_seed(0)
    sneakers = model.sample(5, y=torch.full((5,), 7))
    torch.manual_seed(0)
    assert not torch.equal(sneakers, model.sample(5, y=torch.full((5,), 8)))
    tiles = torch.tensor(list(Image.open(tmp_path / "prior.png").convert("L").getdata()))
    first = tiles.view(30, 5 * 29 + 1)[1:29, 1:29].float() / 255
    torch.testing.assert_close(first, sneakers[0, 0], atol=1 / 255 + 1e-6, rtol=0)

    # the class by its index: the same pixels
    by_index = tmp_path / "by_index"
    result = run_script("sample.py", f"ckpt_path={ckpt}", "label=7", "n=5", f"out={by_index}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (by_index / "prior.png").read_bytes() == (tmp_path / "prior.png").read_bytes()

    result = run_script("sample.py", f"ckpt_path={ckpt}", "label=sock", f"out={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: label='sock' is not allowed: a class index 0..9 or one of its names: "
        "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"
    ]
    result = run_script("sample.py", f"ckpt_path={ckpt}", "sampler=gmm", f"out={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: sampler='gmm' is not allowed: prior: the mixture is of every class's codes; a "
        "conditional decoder needs one"
    ]


def test_export_and_from_pretrained_keep_the_condition(cvae_run, tmp_path):
    from vae_lightning.export import export_checkpoint

    _, metrics = cvae_run
    model = load_checkpoint_model(metrics["best_checkpoint"])
    folder = export_checkpoint(metrics["best_checkpoint"], tmp_path / "cvae", n_images=20)
    loaded = VAE.from_pretrained(folder)
    assert (loaded.hparams.condition, loaded.n_classes) == ("label", 10)
    assert loaded.hparams.class_names[7] == "Sneaker"
    y = torch.arange(10)
    expected = model.sample(10, torch.Generator().manual_seed(1), y=y)
    torch.testing.assert_close(loaded.sample(10, torch.Generator().manual_seed(1), y=y), expected)
    assert "model.sample(n, y=classes)" in (folder / "README.md").read_text()


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (["data=shapes", "model=hierarchical"], "null with this network"),
        (["data=shapes", "model=vqvae"], "null with this network"),
        (["data=shapes", "model.prior=vamp"], "null with model.prior=vamp"),
    ],
)
def test_a_condition_is_refused_with_a_hierarchy_vq_or_vamp_prior(tmp_path, overrides, allowed):
    cfg = make_config(tmp_path, *overrides, "model.condition=label")
    with pytest.raises(ConfigError, match=f"model.condition='label' is not allowed: {allowed}"):
        train(cfg)
    assert not any(tmp_path.iterdir())


def test_train_py_refuses_a_condition_on_data_without_classes_in_one_line(tmp_path):
    """Refused inside the job, once the data says it has no classes: one line, exit status 2,
    and the run directory Hydra had created is gone again."""
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", "data=celeba", f"data.root={tmp_path}", "model.condition=label",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.condition='label' is not allowed: null with data=celeba: its images have no "
        "classes to condition on (mnist, fashion_mnist, kmnist, cifar10 and shapes have, and a "
        "folder of class subfolders)"
    ]
    assert not run_dir.exists()
