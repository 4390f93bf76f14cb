"""The ex-post Gaussian mixture sampler against its mixture's exact moments, its file, and the
sample metrics of the prior and the mixture through train.py, eval.py and sample.py."""

import hashlib
import json
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.helpers import FASHION_MNIST_SUBSET, ROOT, make_config, part, run_script
from vae_lightning.cli import evaluate, train
from vae_lightning.data import ShapesDataModule
from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.features import SHAPES
from vae_lightning.gmm_sampler import (
    GaussianMixtureSampler,
    gmm_of_checkpoint,
    gmm_path,
    posterior_means,
)
from vae_lightning.module import VAE
from vae_lightning.sample_quality import sample_metrics

F64 = torch.float64
METRICS = ("fid", "kid", "kid_std", "precision", "recall")
NETWORK = part("network", "conv", hidden_dims=[8], dense_dim=16)
SAMPLES = ("eval.samples.n=40", "eval.samples.batch_size=16", "eval.samples.gmm_components=3")


def clustered_points(n: int, seed: int) -> torch.Tensor:
    """Three elongated, correlated clusters of unequal sizes in 3 dimensions."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [4.0, -2.0, 1.0], [-3.0, 3.0, 2.0]], dtype=F64)
    cluster = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, True, generator=generator)
    shear = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.3]], dtype=F64)
    return centres[cluster] + torch.randn(n, 3, dtype=F64, generator=generator) @ shear.T


def test_the_draws_have_the_fitted_mixtures_mean_and_covariance():
    mixture = GaussianMixtureSampler.fit(clustered_points(3000, seed=0), n_components=3)
    weights, means, covariances = mixture.weights, mixture.means, mixture.covariances
    # Σ π_k μ_k and Σ π_k (Σ_k + μ_k μ_kᵀ) − μ μᵀ
    mean = weights @ means
    second_moment = sum(
        w * (c + torch.outer(m, m)) for w, m, c in zip(weights, means, covariances, strict=True)
    )
    covariance = second_moment - torch.outer(mean, mean)

    n = 400_000
    draws = mixture.sample(n, torch.Generator().manual_seed(1))
    assert draws.dtype == F64 and draws.shape == (n, 3)
    centred = draws - mean
    # standard errors: of the mean, sd / √n; of each covariance entry, the sd of the product of
    # the centred coordinates / √n
    mean_error = covariance.diagonal().sqrt() / n**0.5
    products = centred[:, :, None] * centred[:, None, :]
    covariance_error = products.std(dim=0) / n**0.5
    assert ((draws.mean(dim=0) - mean).abs() < 4 * mean_error).all()
    assert ((products.mean(dim=0) - covariance).abs() < 4 * covariance_error).all()
    # and the draws are no Gaussian of those moments: the components' weights show
    nearest = torch.cdist(draws[:20_000], means).argmin(dim=1)
    shares = torch.bincount(nearest, minlength=3).double() / 20_000
    torch.testing.assert_close(shares, weights, atol=0.02, rtol=0)


def test_the_saved_file_gives_back_the_same_mixture_and_draws(tmp_path):
    mixture = GaussianMixtureSampler.fit(clustered_points(500, seed=2), n_components=2)
    path = tmp_path / "last.gmm.safetensors"
    mixture.save(path, checkpoint_sha256="ab" * 32)

    loaded, checkpoint_sha256 = GaussianMixtureSampler.load(path)

    assert checkpoint_sha256 == "ab" * 32
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(loaded, name), getattr(mixture, name))
    draws = [m.sample(50, torch.Generator().manual_seed(3)) for m in (mixture, loaded)]
    assert torch.equal(*draws)
    assert gmm_path(tmp_path / "checkpoints" / "last.ckpt") == (
        tmp_path / "checkpoints" / "last.gmm.safetensors"
    )


def test_a_mixture_file_of_other_weights_or_unreadable_is_refitted_and_replaced(tmp_path, caplog):
    model = VAE(image_shape=(1, 32, 32), network=NETWORK, latent_dim=2).eval()
    data = ShapesDataModule(size=64, image_size=32)
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"the weights")  # only its SHA-256 is read
    path = gmm_path(ckpt)

    def saved_for() -> str:
        return GaussianMixtureSampler.load(path)[1]

    fitted = gmm_of_checkpoint(model, data, ckpt, n_components=2)
    assert saved_for() == hashlib.sha256(b"the weights").hexdigest()
    with caplog.at_level(logging.INFO):
        assert torch.equal(gmm_of_checkpoint(model, data, ckpt, 2).means, fitted.means)
    assert f"the Gaussian mixture sampler of {path}" in caplog.text

    ckpt.write_bytes(b"other weights")
    gmm_of_checkpoint(model, data, ckpt, n_components=2)
    assert saved_for() == hashlib.sha256(b"other weights").hexdigest()
    assert len(gmm_of_checkpoint(model, data, ckpt, n_components=3).weights) == 3
    for damaged in (b"not a mixture", None):
        if damaged is None:  # a safetensors file without the mixture's tensors
            save_file({"means": torch.zeros(2, 2)}, path)
        else:
            path.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            gmm_of_checkpoint(model, data, ckpt, n_components=2)
        assert f"refitting {path}: it is unreadable" in caplog.text
        assert len(GaussianMixtureSampler.load(path)[0].weights) == 2


def test_an_iaf_posteriors_mixture_is_fitted_where_the_decoder_reads_codes():
    # Fitted on encode's mu, the base Gaussian's mean before the flow, the mixture would sit in
    # another space than the decoder's whenever the flow is not the identity (it is, at init).
    torch.manual_seed(0)
    model = VAE(
        image_shape=(1, 32, 32), network=NETWORK, posterior=part("posterior", "iaf"), latent_dim=2
    ).eval()
    with torch.no_grad():
        for parameter in model.posterior.steps.parameters():
            parameter.normal_(0, 0.3)
    data = ShapesDataModule(size=64, image_size=32)
    train_images = data.by_batch(data.split("train"))
    x = data.model_input(to_unit_float(train_images[torch.arange(8)][0]), training=False)

    means = posterior_means(model, data, batch_size=16)

    assert means.shape == (len(train_images), 2)
    with torch.no_grad():
        reconstructions = model.reconstruct(x)
        assert (model.decode(model.encode(x)[0]) - reconstructions).abs().max() > 0.01
        torch.testing.assert_close(model.decode(means[:8]), reconstructions)
    mixture = gmm_of_checkpoint(model, data, None, n_components=2)
    torch.testing.assert_close(
        mixture.weights @ mixture.means, means.double().mean(dim=0), rtol=0, atol=1e-6
    )


def test_data_without_a_feature_network_get_no_sample_metrics_and_a_line_why(caplog):
    model = VAE(image_shape=(1, 64, 64), network=NETWORK, latent_dim=2)
    settings = OmegaConf.create({"n": 10, "batch_size": 5, "seed": 0, "gmm_components": 2})
    with caplog.at_level(logging.INFO):
        assert sample_metrics(model, ShapesDataModule(size=64, image_size=64), settings) == {}
    assert (
        "no sample metrics: the data (shapes, 1x64x64) has no feature network (fashion_mnist at "
        "1x28x28, shapes at 1x32x32 have one)"
    ) in caplog.text


def test_a_test_split_too_small_for_precision_and_recall_gets_no_sample_metrics(caplog):
    model = VAE(image_shape=(1, 32, 32), network=NETWORK, latent_dim=2)
    settings = OmegaConf.create({"n": 10, "batch_size": 5, "seed": 0, "gmm_components": 2})
    three_test_images = ShapesDataModule(size=30, image_size=32)
    with caplog.at_level(logging.INFO):
        assert sample_metrics(model, three_test_images, settings) == {}
    assert "no sample metrics: precision/recall needs more than 3 test images" in caplog.text


def test_shapes_runs_report_sample_metrics_in_the_shapes_networks_features(tmp_path):
    cfg = make_config(
        tmp_path / "run", f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4", "callbacks.pictures=null", "logger=[]",
        "eval.iwae_k=2", *SAMPLES,
    )  # fmt: skip
    metrics = train(cfg)
    keys = {f"test/{m}_shapes_features{s}" for m in METRICS for s in ("", "_gmm")}
    assert keys <= set(metrics)
    assert metrics["test/shapes_features_test_accuracy"] == SHAPES.record()["test_accuracy"]
    assert all(0 <= metrics[f"test/{m}_shapes_features"] <= 1 for m in ("precision", "recall"))
    assert metrics["test/fid_shapes_features_gmm"] != metrics["test/fid_shapes_features"] > 0


def fashion_mnist_run(tmp_path, *overrides: str) -> dict:
    run_dir = tmp_path / "run"
    cfg = make_config(
        run_dir,
        "data=fashion_mnist",
        f"data.root={FASHION_MNIST_SUBSET}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4",
        "callbacks.pictures=null",
        "logger=[]",
        "eval.iwae_k=2",
        *SAMPLES,
        *overrides,
    )
    # train.py's own .hydra/config.yaml, which sample.py and eval.py read the data from
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return train(cfg)


def test_fashion_mnist_runs_report_prior_and_mixture_sample_metrics_and_sample_py_draws_gmm(
    tmp_path, caplog
):
    metrics = fashion_mnist_run(tmp_path)
    keys = {f"test/{m}_fmnist_features{s}" for m in METRICS for s in ("", "_gmm")}
    assert keys <= set(metrics)
    assert 0 < metrics["test/fmnist_features_test_accuracy"] < 1
    assert all(0 <= metrics[f"test/{m}_fmnist_features"] <= 1 for m in ("precision", "recall"))
    assert metrics["test/fid_fmnist_features_gmm"] != metrics["test/fid_fmnist_features"]
    best = metrics["best_checkpoint"]
    assert gmm_path(best).is_file()
    assert metrics["phases_s"]["sample metrics"] > 0

    # eval.py's evaluation: the same checkpoint, seed and n, the mixture saved beside it
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        eval_cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={best}",
                f"paths.output_dir={tmp_path / 'eval'}",
                f"paths.root_dir={ROOT}",
                "eval.iwae_k=2",
                *SAMPLES,
            ],
        )
    with caplog.at_level(logging.INFO):
        evaluated = evaluate(eval_cfg)
    assert f"the Gaussian mixture sampler of {gmm_path(best)}" in caplog.text
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in [*keys, "test/fmnist_features_test_accuracy"]:
        assert written[key] == evaluated[key] == pytest.approx(metrics[key], rel=1e-6), key

    result = run_script(
        "sample.py", f"ckpt_path={best}", "sampler=gmm", "gmm_components=3", "n=16",
        f"out={tmp_path / 'samples'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "samples" / "gmm.png").stat().st_size > 0


def test_eval_samples_null_turns_the_sample_metrics_off(tmp_path):
    metrics = fashion_mnist_run(tmp_path, "eval.samples=null")
    assert not [key for key in metrics if "fmnist_features" in key]
    assert not gmm_path(metrics["best_checkpoint"]).exists()
