"""The sample-quality metrics against exact answers, and the feature networks they run on."""

import json
import math
import shutil

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import FASHION_MNIST_SUBSET, TINY, run_script
from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.data.shapes import FACTOR_NAMES, render, sample_factor_indices
from vae_lightning.data.sources import read_idx_split
from vae_lightning.features import (
    FASHION_MNIST,
    SHAPES,
    SHIPPED,
    DamagedWeightsError,
    FeatureNetwork,
    inception_features,
)
from vae_lightning.sample_quality import SampleQuality, precision_recall


class Vectors(FeatureNetwork):
    """The identity on feature vectors (N, d): the metrics then see exactly the given points."""

    name = "vectors"

    def __init__(self, dimension: int):
        super().__init__()
        self.num_features = dimension

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return points


def metrics_of(real: torch.Tensor, generated: torch.Tensor, **options) -> dict[str, float]:
    options.setdefault("kid_subsets", 10)  # KID is not the point of most tests: less of it
    quality = SampleQuality(Vectors(real.shape[1]), **options)
    quality.update(real, real=True)
    quality.update(generated, real=False)
    return quality.compute()


def with_moments(mean: torch.Tensor, covariance: torch.Tensor, n: int, seed: int):
    """n points whose sample mean and (n - 1)-normalised covariance are exactly the given ones."""
    z = torch.randn(
        n, len(mean), dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    z = z - z.mean(dim=0)
    whitening = torch.linalg.cholesky(z.T @ z / (n - 1))
    z = torch.linalg.solve_triangular(whitening, z.T, upper=False).T  # sample covariance: I
    return mean + z @ torch.linalg.cholesky(covariance).T


def test_fid_is_zero_for_identical_sets():
    points = torch.randn(200, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert metrics_of(points, points.clone())["fid_vectors"] == pytest.approx(0, abs=1e-9)


def test_fid_is_the_closed_form_frechet_distance_of_the_two_sets_moments():
    mean_1 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    mean_2 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    covariance_1 = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    covariance_2 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=torch.float64)
    real = with_moments(mean_1, covariance_1, 300, seed=1)
    generated = with_moments(mean_2, covariance_2, 500, seed=2)
    # |m1 - m2|² + tr S1 + tr S2 - 2 tr (S1 S2)^½, where for a 2x2 product with positive
    # eigenvalues a, b: tr (S1 S2)^½ = √a + √b = √(tr(S1 S2) + 2 √det(S1 S2)).
    product = covariance_1 @ covariance_2
    root_trace = math.sqrt(product.trace() + 2 * math.sqrt(product.det()))
    expected = (4 + 4) + 3.0 + 2.0 - 2 * root_trace
    assert metrics_of(real, generated)["fid_vectors"] == pytest.approx(expected, rel=1e-9)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel: (x.y / d + 1)³."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def test_kid_is_unbiased_the_mean_of_many_small_subsets_is_the_exact_mmd():
    """P and Q uniform on three points each: MMD² = E k(x, x') + E k(y, y') - 2 E k(x, y) over
    independent draws, exactly, by enumeration. Subsets of 2 images each make the biased
    estimator's error large (it counts k(x, x) in the first two means)."""
    support_p = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    support_q = torch.tensor([[0.5, 0.5], [1.5, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    exact = (
        polynomial_kernel(support_p, support_p).mean()
        + polynomial_kernel(support_q, support_q).mean()
        - 2 * polynomial_kernel(support_p, support_q).mean()
    ).item()
    draws = torch.Generator().manual_seed(3)
    real = support_p[torch.randint(0, 3, (1000,), generator=draws)]
    generated = support_q[torch.randint(0, 3, (1000,), generator=draws)]
    torch.manual_seed(4)  # torchmetrics draws the subsets from the global generator
    subsets = 4000
    metrics = metrics_of(real, generated, kid_subsets=subsets, kid_subset_size=2)
    standard_error = metrics["kid_std_vectors"] / math.sqrt(subsets)

    def self_term(support):  # what the biased estimator adds, in expectation, at 2 points
        kernel = polynomial_kernel(support, support)
        return (kernel.diagonal().mean() - kernel.mean()).item() / 2

    bias = self_term(support_p) + self_term(support_q)
    assert bias > 10 * standard_error
    assert metrics["kid_vectors"] == pytest.approx(exact, abs=4 * standard_error)


def test_precision_and_recall_are_one_for_identical_sets():
    points = torch.randn(300, 4, generator=torch.Generator().manual_seed(5))
    assert precision_recall(points, points.clone()) == (1.0, 1.0)


def test_precision_and_recall_are_zero_for_clouds_far_apart():
    points = torch.randn(100, 3, generator=torch.Generator().manual_seed(6))
    assert precision_recall(points, points + 100) == (0.0, 0.0)


def test_a_generated_subset_has_full_precision_and_the_recall_its_balls_reach():
    """Real images at 0, 1, ..., 9 on a line, generated ones at 0, ..., 4. With k = 3 the
    generated balls have radii 3, 2, 2, 2, 3 and reach 0 to 7 (7 = 4 + 3, on the boundary,
    which counts): recall 8/10; every generated point is a real one: precision 1."""
    real = torch.arange(10.0).unsqueeze(1)
    generated = torch.arange(5.0).unsqueeze(1)
    assert precision_recall(real, generated) == (1.0, 0.8)
    metrics = metrics_of(real, generated)
    assert (metrics["precision_vectors"], metrics["recall_vectors"]) == (1.0, 0.8)


def test_the_metrics_are_named_after_their_network_with_its_test_accuracy_beside_them():
    network = FASHION_MNIST.features()
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    quality = SampleQuality(network)
    quality.update(images[:4], real=True)
    quality.update(images[4:], real=False)
    metrics = quality.compute()
    assert set(metrics) == {
        f"{kind}_fmnist_features" for kind in ("fid", "kid", "kid_std", "precision", "recall")
    } | {"fmnist_features_test_accuracy"}
    assert metrics["fmnist_features_test_accuracy"] == FASHION_MNIST.record()["test_accuracy"]


def test_the_shipped_network_classifies_the_real_test_subset_about_as_recorded():
    """The first 200 test images: within 3 standard deviations of a binomial at the accuracy
    recorded on all 10,000."""
    test = read_idx_split(FASHION_MNIST_SUBSET, "test", size=28, channels=1)
    with torch.no_grad():
        predicted = FASHION_MNIST.classifier()(to_unit_float(test.images)).argmax(dim=1)
    accuracy = (predicted == test.labels).double().mean().item()
    recorded = FASHION_MNIST.record()["test_accuracy"]
    assert recorded > 0.85
    assert accuracy == pytest.approx(recorded, abs=3 * math.sqrt(recorded * (1 - recorded) / 200))


def test_the_shapes_network_tells_the_factors_of_its_test_images_about_as_recorded():
    """500 of its 10,000 test images, rendered again from the grid points the tool drew: each
    factor's accuracy within 3 standard deviations of a binomial at the recorded one."""
    record = SHAPES.record()
    factors = sample_factor_indices(record["grid_points_drawn"], record["seed"])[-500:]
    with torch.no_grad():
        logits = SHAPES.classifier()(to_unit_float(render(factors, 32)))
    recorded = record["factor_test_accuracies"]
    assert list(recorded) == list(FACTOR_NAMES) and recorded["shape"] == record["test_accuracy"]
    for name, head, column in zip(FACTOR_NAMES, logits, factors.T, strict=True):
        accuracy = (head.argmax(dim=1) == column).double().mean().item()
        spread = 3 * math.sqrt(recorded[name] * (1 - recorded[name]) / 500)
        assert accuracy == pytest.approx(recorded[name], abs=spread), name
    assert recorded["shape"] > 0.9 and recorded["pos_x"] > 0.5  # chance: 1/3 and 1/32


@pytest.mark.parametrize("shipped", SHIPPED.values(), ids=list(SHIPPED))
def test_a_changed_weights_file_is_refused_by_its_checksum(tmp_path, shipped):
    copy = tmp_path / shipped.weights.name
    shutil.copyfile(shipped.weights, copy)
    shipped.classifier(copy)  # the intact copy loads
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    copy.write_bytes(bytes(data))
    with pytest.raises(DamagedWeightsError, match=f"{copy} has SHA-256 .* not the"):
        shipped.classifier(copy)


def grey_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def features_through(network: FeatureNetwork, real: torch.Tensor, generated: torch.Tensor):
    """The features SampleQuality stored of each set, and its metrics."""
    quality = SampleQuality(network)
    quality.update(real, real=True)
    quality.update(generated, real=False)
    return torch.cat(quality.features[True]), torch.cat(quality.features[False]), quality.compute()


@pytest.mark.slow
def test_a_torchvision_inception_state_dict_from_a_file_gives_the_metrics_its_features(tmp_path):
    """Random weights, written by the test; the features must be those of torchvision's
    inception_v3 with these weights, on the images made RGB, 299x299 and in [-1, 1]."""
    torch.manual_seed(8)
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    path = tmp_path / "inception.pt"
    torch.save(reference.state_dict(), path)
    reference.fc = nn.Identity()
    reference.eval()
    real, generated = grey_images(4, 9), grey_images(4, 10)

    real_features, generated_features, metrics = features_through(
        inception_features(path), real, generated
    )

    def expected(images):
        resized = nn.functional.interpolate(
            images.repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear"
        )
        with torch.no_grad():
            return reference(2 * resized - 1)

    assert real_features.shape == (4, 2048)
    torch.testing.assert_close(real_features, expected(real))
    torch.testing.assert_close(generated_features, expected(generated))
    assert "fid_inception_features" in metrics and "inception_features_test_accuracy" not in metrics
    assert math.isfinite(metrics["fid_inception_features"])


class PoolFeatures(nn.Module):
    """A stand-in for pytorch-fid's InceptionV3: images in [0, 1] to a list of (N, 2048, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2048)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.linear(images.mean(dim=(2, 3)))[:, :, None, None]]


def test_a_torchscript_inception_from_a_file_gives_the_metrics_its_features(tmp_path):
    torch.manual_seed(11)
    scripted = torch.jit.script(PoolFeatures())
    path = tmp_path / "pt_inception.pt"
    scripted.save(str(path))
    real, generated = grey_images(5, 12), grey_images(5, 13)

    real_features, _, metrics = features_through(inception_features(path), real, generated)

    resized = nn.functional.interpolate(real.repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear")
    with torch.no_grad():
        torch.testing.assert_close(real_features, scripted(resized)[0].flatten(start_dim=1))
    assert metrics["precision_inception_features"] >= 0


@pytest.mark.slow
def test_the_benchmark_command_measures_a_trained_runs_prior_samples(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", *TINY, "data=fashion_mnist", f"data.root={FASHION_MNIST_SUBSET}",
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "callbacks.pictures=null", "eval.iwae_k=2",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    result = run_script("benchmarks/sample_quality.py", f"ckpt_path={ckpt}", "n=40", "seed=3")
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((run_dir / "sample_quality.json").read_text())
    assert written["generated_images"] == written["test_images"] == 40
    assert written["fid_fmnist_features"] > 0 and 0 <= written["recall_fmnist_features"] <= 1
    assert f"fid_fmnist_features: {written['fid_fmnist_features']:.6g}" in result.stdout
    accuracy = FASHION_MNIST.record()["test_accuracy"]
    assert "NOT Inception FIDs" in result.stdout
    assert f"test accuracy {accuracy:.4f}" in result.stdout

    again = run_script(
        "benchmarks/sample_quality.py", f"ckpt_path={ckpt}", "n=40", "seed=3",
        f"out={tmp_path / 'again.json'}",
    )  # fmt: skip
    assert json.loads((tmp_path / "again.json").read_text()) | {"seconds": 0} == written | {
        "seconds": 0
    }  # the same seed, the same numbers
    assert again.returncode == 0

    # training images in place of samples: the floor, far below a barely trained model's numbers
    result = run_script(
        "benchmarks/sample_quality.py", f"ckpt_path={ckpt}", "n=40", "samples=training_images",
        f"out={tmp_path / 'floor.json'}",
    )  # fmt: skip
    floor = json.loads((tmp_path / "floor.json").read_text())
    assert floor["fid_fmnist_features"] < written["fid_fmnist_features"] / 2

    result = run_script("benchmarks/sample_quality.py", f"ckpt_path={ckpt}", "nn=40")
    assert result.returncode == 2 and "Key 'nn'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
