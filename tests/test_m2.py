"""M2's bounds and loss (objectives/m2.py) against the same sums written out class by class and
image by image, in float64."""

import math

import pytest
import torch

from vae_lightning.objectives.m2 import m2_terms, unlabelled_bound

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
