"""M2's bounds and loss (objectives/m2.py) against the same sums written out class by class and
image by image, in float64."""

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import FASHION_MNIST_SUBSET, make_config, part, run_script
from vae_lightning.cli import train
from vae_lightning.elbo import ELBOTerms
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE, ConditionedOn
from vae_lightning.objectives import ELBO, TrainingState
from vae_lightning.objectives.m2 import M2, m2_terms, unlabelled_bound

B, K = 6, 4


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled bounds L(x,y) (B, K), log-likelihood-sized, and logits of q(y|x) (B, K)."""
    generator = torch.Generator().manual_seed(seed)
    bounds = -100 + 20 * torch.randn(B, K, generator=generator, dtype=torch.float64)
    logits = 3 * torch.randn(B, K, generator=generator, dtype=torch.float64)
    return bounds, logits


def brute_force_u(bounds: torch.Tensor, logits: torch.Tensor, i: int) -> float:
    """sum_y q(y|x) L(x,y) - sum_y q(y|x) log q(y|x) for image i, one class at a time."""
    normaliser = sum(math.exp(logits[i, y].item()) for y in range(K))
    total = 0.0
    for y in range(K):
        q = math.exp(logits[i, y].item()) / normaliser
        total += q * bounds[i, y].item() - q * math.log(q)
    return total


def test_the_unlabelled_bound_is_the_sum_over_classes_and_at_most_log_sum_exp():
    bounds, logits = batch(0)
    u = unlabelled_bound(bounds, logits)
    assert u.shape == (B,)
    for i in range(B):
        assert u[i].item() == pytest.approx(brute_force_u(bounds, logits, i), rel=1e-12)
    # log p(x) >= U(x), tight when q(y|x) is the exact posterior over y, softmax(L(x,.))
    assert (u < bounds.logsumexp(dim=1)).all()
    assert torch.allclose(unlabelled_bound(bounds, bounds), bounds.logsumexp(dim=1), rtol=1e-12)


def test_with_every_label_and_alpha_zero_the_loss_is_the_conditional_vaes():
    bounds, logits = batch(1)
    labels = torch.tensor([2, 0, 3, 3, 1, 0])
    terms = m2_terms(bounds, logits, labels, n_labelled=50, n_train=50, alpha=0)
    cvae = sum(-bounds[i, labels[i]].item() for i in range(B)) / B
    assert terms.loss.item() == pytest.approx(cvae, rel=1e-12)


def test_the_loss_of_a_mixed_batch_is_the_papers_objective_per_image_alpha_a_tenth_of_n():
    bounds, logits = batch(2)
    labels = torch.tensor([1, -1, -1, 3, -1, -1])
    n_labelled, n_train = 100, 1000
    terms = m2_terms(bounds, logits, labels, n_labelled, n_train)
    labelled = [i for i in range(B) if labels[i] >= 0]
    unlabelled = [i for i in range(B) if labels[i] < 0]
    mean_l = sum(bounds[i, labels[i]].item() for i in labelled) / len(labelled)
    mean_u = sum(brute_force_u(bounds, logits, i) for i in unlabelled) / len(unlabelled)
    mean_ce = -sum(
        logits[i, labels[i]].item() - math.log(sum(math.exp(v) for v in logits[i].tolist()))
        for i in labelled
    ) / len(labelled)
    alpha = 0.1 * n_train
    expected = (-n_labelled * mean_l - (n_train - n_labelled) * mean_u + alpha * mean_ce) / n_train
    assert terms.loss.item() == pytest.approx(expected, rel=1e-12)
    assert (terms.labelled.item(), terms.unlabelled.item(), terms.cross_entropy.item()) == (
        pytest.approx(mean_l, rel=1e-12),
        pytest.approx(mean_u, rel=1e-12),
        pytest.approx(mean_ce, rel=1e-12),
    )


def test_a_batch_of_one_kind_leaves_the_other_term_out_and_the_loss_has_gradients():
    bounds, logits = batch(3)
    bounds.requires_grad_(True)
    logits.requires_grad_(True)
    unlabelled = m2_terms(bounds, logits, torch.full((B,), -1), 10, 100)
    assert unlabelled.labelled.item() == unlabelled.cross_entropy.item() == 0
    assert unlabelled.loss.item() == pytest.approx(
        -0.9 * unlabelled_bound(bounds, logits).mean().item(), rel=1e-12
    )
    unlabelled.loss.backward()
    assert bounds.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


# --- the M2 objective, on a stand-in for the conditional VAE whose bounds are known ----------

IMAGE_SHAPE = (1, 3, 3)
N_TRAIN, N_LABELLED = 1000, 100


class KnownBounds:
    """A conditional model's elbo_terms(x, y) as a known function of the image and its class."""

    def __init__(self, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(K, 9, generator=generator, dtype=torch.float64)
        self.kl_offset = torch.rand(K, generator=generator, dtype=torch.float64)

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor) -> ELBOTerms:
        flat = x.flatten(1)
        return ELBOTerms(
            recon=50 + (flat * self.weights[y]).sum(dim=1), kl=self.kl_offset[y] + flat.mean(dim=1)
        )

    def bound(self, x: torch.Tensor, y: int, kl_weight: float) -> float:
        """L(x,y) of one image, written out."""
        terms = self.elbo_terms(x[None], torch.tensor([y]))
        return -(terms.recon.item() + kl_weight * terms.kl.item())


def m2(**options) -> M2:
    torch.manual_seed(0)
    return M2(IMAGE_SHAPE, K, **{"n_labelled": N_LABELLED, **options}).double()


def images(seed: int) -> torch.Tensor:
    return torch.rand(B, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed)).double()


def by_hand(objective: M2, model: KnownBounds, x, labels, kl_weight: float, n_labelled: int):
    """The paper's J^alpha / N over the batch, image by image: each kind weighted by its share of
    the training set, the labelled images' term from their own class's bound."""
    logits = objective.classifier(x).detach()
    labelled = [i for i in range(len(x)) if labels[i] >= 0]
    unlabelled = [i for i in range(len(x)) if labels[i] < 0]
    bounds = torch.tensor(
        [[model.bound(x[i], y, kl_weight) for y in range(K)] for i in range(len(x))],
        dtype=torch.float64,
    )
    mean_l = sum(bounds[i, labels[i]].item() for i in labelled) / len(labelled)
    mean_u = sum(brute_force_u(bounds, logits, i) for i in unlabelled) / len(unlabelled)
    mean_ce = -sum(logits[i].log_softmax(0)[labels[i]].item() for i in labelled) / len(labelled)
    n_unlabelled = N_TRAIN - n_labelled
    return (-n_labelled * mean_l - n_unlabelled * mean_u + 0.1 * N_TRAIN * mean_ce) / N_TRAIN


def test_the_m2_objective_is_the_papers_loss_of_the_models_bounds_and_logs_the_accuracy():
    objective, model, x = m2(), KnownBounds(4), images(4)
    labels = torch.tensor([1, -1, -1, 3, -1, -1])
    state = TrainingState(kl_weight=0.5, dataset_size=N_TRAIN)
    out = objective(SimpleNamespace(model=model, labels=labels), x, state)
    assert out.loss.item() == pytest.approx(by_hand(objective, model, x, labels, 0.5, 100), 1e-10)
    predicted = objective.classifier(x).argmax(dim=1)
    assert out.logged["accuracy"].item() == (predicted[[0, 3]] == labels[[0, 3]]).double().mean()
    assert set(out.logged) == {"labelled_bound", "unlabelled_bound", "classifier_ce", "accuracy"}


def test_held_out_images_with_every_label_count_as_both_kinds_as_the_training_set_mixes_them():
    objective, model, x = m2(), KnownBounds(5), images(5)
    labels = torch.tensor([1, 0, 2, 3, 0, 1])
    out = objective(SimpleNamespace(model=model, labels=labels), x, TrainingState(1.0, 0, 0, 1000))
    both = torch.cat([x, x]), torch.cat([labels, torch.full((B,), -1)])
    assert out.loss.item() == pytest.approx(by_hand(objective, model, *both, 1.0, 100), 1e-10)
    # training with every label: the labelled term alone, as the conditional VAE's
    every = m2(n_labelled=None, alpha=0)
    cvae = every(SimpleNamespace(model=model, labels=labels), x, TrainingState(dataset_size=1000))
    assert "unlabelled_bound" not in cvae.logged
    expected = -sum(model.bound(x[i], labels[i].item(), 1.0) for i in range(B)) / B
    assert cvae.loss.item() == pytest.approx(expected, rel=1e-10)


def classifier_grads(objective: M2, loss: torch.Tensor) -> list[torch.Tensor]:
    parameters = list(objective.classifier.parameters())
    return torch.autograd.grad(loss, parameters, allow_unused=True, materialize_grads=True)


def test_the_classifier_learns_only_from_the_terms_that_read_q_y_given_x():
    model, x = KnownBounds(6), images(6)
    state = TrainingState(dataset_size=N_TRAIN)
    labelled, unlabelled = torch.tensor([1, 0, 2, 3, 0, 1]), torch.full((B,), -1)
    # labelled images: the bound L(x,y) does not read q(y|x), the cross-entropy does
    objective = m2(n_labelled=None)
    grads = classifier_grads(
        objective, objective(SimpleNamespace(model=model, labels=labelled), x, state).loss
    )
    cross_entropy = 0.1 * F.cross_entropy(objective.classifier(x), labelled)
    for grad, expected in zip(grads, classifier_grads(objective, cross_entropy), strict=True):
        assert torch.allclose(grad, expected, rtol=1e-10)
    objective = m2(n_labelled=None, alpha=0)
    loss = objective(SimpleNamespace(model=model, labels=labelled), x, state).loss
    assert all((grad == 0).all() for grad in classifier_grads(objective, loss))
    # unlabelled images: U(x) sums the bounds over q(y|x)
    objective = m2()
    loss = objective(SimpleNamespace(model=model, labels=unlabelled), x, state).loss
    bounds = torch.stack([model.elbo_terms(x, torch.full((B,), y)).elbo for y in range(K)], 1)
    u = -0.9 * unlabelled_bound(bounds, objective.classifier(x)).mean()
    for grad, expected in zip(
        classifier_grads(objective, loss), classifier_grads(objective, u), strict=True
    ):
        assert torch.allclose(grad, expected, rtol=1e-10) and expected.abs().sum() > 0


def test_with_every_label_and_alpha_zero_m2_is_the_conditional_vaes_elbo():
    """Through the real classes: the conditional VAE that model=m2 builds, seen by the objectives
    as the module's _step gives it them, at the same posterior draws."""
    torch.manual_seed(0)
    objective = part("objective", "m2", n_labelled=None, alpha=0, classifier_hidden_dims=[4])
    network = part("network", "mlp", hidden_dims=[8])
    model = VAE(
        (1, 3, 3), network, objective=objective, latent_dim=2, condition="label", n_classes=K
    )
    x, labels = images(7).float(), torch.tensor([2, 0, 3, 3, 1, 0])
    view, state = ConditionedOn(model, labels), TrainingState(dataset_size=50)
    torch.manual_seed(1)
    m2_loss = model.objective(view, x, state).loss
    torch.manual_seed(1)
    cvae_loss = ELBO()(view, x, state).loss
    assert m2_loss.item() == pytest.approx(cvae_loss.item(), rel=1e-6)
    torch.manual_seed(1)
    given_y = -model.elbo_terms(x, labels).elbo.mean()
    assert cvae_loss.item() == pytest.approx(given_y.item(), rel=1e-6)


def test_trains_semi_supervised_on_fashion_mnist_and_reports_the_classifiers_test_accuracy(
    tmp_path,
):
    """model=m2 data.labelled=20 through train.py's function: the few labelled and the many
    unlabelled training images in every batch, q(y|x)'s accuracy on the test set in metrics.json."""
    metrics = train(
        make_config(
            tmp_path, "data=fashion_mnist", f"data.root={FASHION_MNIST_SUBSET}",
            f"data.cache_dir={tmp_path / 'cache'}", "model=m2", "data.labelled=20",
            "model.objective.classifier_hidden_dims=[16]", "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "eval.iwae_k=2",
            "callbacks.pictures=null", "eval.conditional_samples=10",
        )
    )  # fmt: skip
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test/accuracy"] == metrics["test/accuracy"]
    # 200 test images: a whole number of right answers, by a classifier of 3 steps
    assert 0 <= written["test/accuracy"] <= 1
    assert written["test/accuracy"] * 200 == pytest.approx(round(written["test/accuracy"] * 200))
    for key in ("test/loss", "test/labelled_bound", "test/unlabelled_bound", "val/loss"):
        assert math.isfinite(written[key])
    # a held-out image counts as both kinds: the loss mixes -L and -U as the training set does,
    # 20 labelled of the subset's 600 training images less the 10% validation split
    n_labelled, n_train = 20, 540
    expected = (
        -n_labelled * written["test/labelled_bound"]
        - (n_train - n_labelled) * written["test/unlabelled_bound"]
        + 0.1 * n_train * written["test/classifier_ce"]
    ) / n_train
    assert written["test/loss"] == pytest.approx(expected, rel=1e-5)
    assert written["steps"] == 3


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"n_classes": None}, "model.condition"),
        ({"n_classes": 1}, "model.objective.n_classes"),
        ({"n_labelled": 0}, "model.objective.n_labelled"),
        ({"alpha": -1.0}, "model.objective.alpha"),
        ({"classifier_hidden_dims": []}, "model.objective.classifier_hidden_dims"),
    ],
)
def test_bad_values_are_refused_naming_their_key(options, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}="):
        M2(IMAGE_SHAPE, **{"n_classes": K, **options})


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (
            ["model.objective=m2"],
            "error: model.condition=None is not allowed: label with model.objective=m2: M2 "
            "generates each image from its class (model=m2 sets it)",
        ),
        (
            ["model=m2", "model.free_bits=0.5"],
            "error: model.free_bits=0.5 is not allowed: 0 with model.objective=m2: a floor on a "
            "batch's mean KL has no form per class",
        ),
    ],
)
def test_m2_without_the_condition_or_with_free_bits_is_refused_in_one_line(
    tmp_path, arguments, line
):
    run_dir = tmp_path / "run"
    result = run_script("train.py", *arguments, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
    assert not run_dir.exists()
