"""The bounds and loss of the semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling 2014,
"Semi-supervised learning with deep generative models", section 3.1.2), as pure tensor maths:
what a model computed for a batch in, the loss out.

M2 generates x from a latent z and a class y, p(x|y,z) p(z) p(y), and infers both with q(z|x,y)
and the classifier q(y|x). Its bounds, for a batch of B images and K classes:

- the labelled bound L(x,y) <= log p(x,y): the ELBO of x with its class y given (the model
  computes it per class, `bounds` (B, K));
- the unlabelled bound U(x) = sum_y q(y|x) L(x,y) + H(q(y|x)) <= log p(x), y summed out
  exactly rather than sampled (as the authors' code does: nips14-ssl, learn_yz_x_ss.py).

The loss is the paper's J^alpha = sum_labelled -L(x,y) + sum_unlabelled -U(x)
+ alpha E_labelled[-log q(y|x)] (eq. 9) divided by N, the training set's size, so that it is per
image like the other objectives' losses, with the paper's alpha = 0.1 N by default (the code's
weight on log q(y|x) of a labelled image, 0.1 N / N_labelled, is the same).

`M2` is the objective (model.objective=m2, with model.condition=label): it owns the classifier
q(y|x) and reads the conditional VAE's bounds L(x,y) through the `ConditionedOn` view it is given.
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from vae_lightning.checks import non_negative, positive_int, positive_ints, require
from vae_lightning.data.classes import UNLABELLED
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState


class M2Terms(NamedTuple):
    """The loss and, for logging, the batch means of its terms (0 where the batch has none of
    their images): `labelled` L(x,y) and `cross_entropy` -log q(y|x) over the labelled images,
    `unlabelled` U(x) over the unlabelled ones."""

    loss: torch.Tensor
    labelled: torch.Tensor
    unlabelled: torch.Tensor
    cross_entropy: torch.Tensor


def unlabelled_bound(bounds: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """U(x) = sum_y q(y|x) L(x,y) + H(q(y|x)), (B,), from the labelled bounds L(x,y) of each
    class (B, K) and the logits of q(y|x) (B, K). It equals log sum_y exp L(x,y), the most it can
    be, when q(y|x) is softmax(L(x,.))."""
    log_q = logits.log_softmax(dim=-1)
    return (log_q.exp() * (bounds - log_q)).sum(dim=-1)


def _mean(values: torch.Tensor) -> torch.Tensor:
    """The mean, and 0 of none."""
    return values.mean() if len(values) else values.new_zeros(())


def m2_terms(
    bounds: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_labelled: int,
    n_train: int,
    alpha: float | None = None,
) -> M2Terms:
    """M2's loss for a batch: J^alpha / N (see the module's docstring), estimated by
    (N_l / N) mean_labelled(-L(x,y)) + (N_u / N) mean_unlabelled(-U(x))
    + (alpha / N) mean_labelled(-log q(y|x)).

    `bounds` (B, K): L(x,y) for each class (of a labelled image only its own class is read);
    `logits` (B, K) of q(y|x); `labels` (B,): the class, or UNLABELLED (-1); `n_labelled` of the
    `n_train` training images have a label; `alpha` None: 0.1 * n_train. Each kind of image is
    weighted by its share of the training set, not of the batch, so the estimate stays
    unbiased however many labelled images a batch holds (MixedIndexBatches gives them more than
    their share). A batch without one kind of image leaves its term out."""
    alpha = 0.1 * n_train if alpha is None else alpha
    labelled = labels != UNLABELLED
    classes = labels[labelled].unsqueeze(-1)
    mean_bound = _mean(bounds[labelled].gather(-1, classes).squeeze(-1))
    log_q = logits[labelled].log_softmax(dim=-1)
    mean_cross_entropy = _mean(-log_q.gather(-1, classes).squeeze(-1))
    mean_unlabelled = _mean(unlabelled_bound(bounds[~labelled], logits[~labelled]))
    loss = (
        -n_labelled * mean_bound
        - (n_train - n_labelled) * mean_unlabelled
        + alpha * mean_cross_entropy
    ) / n_train
    return M2Terms(loss, mean_bound, mean_unlabelled, mean_cross_entropy)


def build_classifier(
    image_shape: Sequence[int], n_classes: int, hidden_dims: Sequence[int]
) -> nn.Sequential:
    """q(y|x): an MLP from the flattened image to n_classes logits, ReLU between its layers (the
    paper's M2 on MNIST: one hidden layer of 500 units)."""
    widths = [math.prod(image_shape), *hidden_dims]
    blocks: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        blocks += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(widths[-1], n_classes))


class M2(Objective):
    """M2's loss, `m2_terms`, for a batch whose hidden labels are UNLABELLED (data.labelled).

    forward's `view` is the conditional VAE's `ConditionedOn(model, labels)`: a labelled image's
    bound is L(x,y) = -(recon + kl_weight * kl) of `view.model.elbo_terms(x, y)` at its class;
    an unlabelled image is repeated once per class y = 0..K-1, all in one pass, for U(x).
    kl_weight is model.beta after warm-up, 1 by default (the bound itself); free bits, a floor on
    a batch's mean KL, has no per-class form and is refused with M2 (config.py).

    A batch whose every label is known while the training set hides some (validation and test
    data) counts each image as both kinds, labelled and unlabelled, so that val/loss estimates
    the same J / N as train/loss (at K passes per image).

    `n_classes` and `image_shape` come from the model (the data's classes); `n_labelled`: the
    training images that keep their label, data.labelled (None: every one); `alpha`: the weight
    of the classifier's cross-entropy on the labelled images, None: 0.1 N, the paper's;
    `classifier_hidden_dims`: q(y|x)'s hidden layers. The classifier trains with the VAE, in the
    model's optimiser.

    Logged: `labelled_bound`, `unlabelled_bound`, `classifier_ce` (each where the batch has its
    images) and `accuracy`, q(y|x)'s on the batch's known labels: test/accuracy is the
    classifier's on the test set.
    """

    needs_dataset_size = True

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        n_classes: int | None = None,
        n_labelled: int | None = None,
        alpha: float | None = None,
        classifier_hidden_dims: Sequence[int] = (500,),
    ):
        super().__init__()
        require(
            n_classes is not None,
            "model.condition",
            None,
            "label with model.objective=m2: M2 generates each image from its class",
        )
        require(
            positive_int(n_classes) and n_classes >= 2,
            "model.objective.n_classes",
            n_classes,
            "at least 2 classes: M2 needs labelled data (mnist, fashion_mnist, ...)",
        )
        require(
            n_labelled is None or positive_int(n_labelled),
            "model.objective.n_labelled",
            n_labelled,
            "a positive integer, the training images that keep their label (data.labelled), "
            "or null for every one",
        )
        require(
            alpha is None or non_negative(alpha),
            "model.objective.alpha",
            alpha,
            "a number >= 0, or null for 0.1 times the training images (the paper's)",
        )
        hidden_dims = list(classifier_hidden_dims)
        require(
            positive_ints(hidden_dims),
            "model.objective.classifier_hidden_dims",
            hidden_dims,
            "a non-empty list of positive integers, e.g. [500]",
        )
        self.n_classes, self.n_labelled, self.alpha = n_classes, n_labelled, alpha
        self.classifier = build_classifier(image_shape, n_classes, hidden_dims)

    def bounds(
        self, model: Any, x: torch.Tensor, labels: torch.Tensor, state: TrainingState
    ) -> torch.Tensor:
        """L(x,y) (B, K): of each unlabelled image for every class, of a labelled one at its own
        class only (the other columns 0, never read by `m2_terms`)."""
        known = labels != UNLABELLED
        unlabelled = x[~known]
        every_class = torch.arange(self.n_classes, device=x.device)
        terms = model.elbo_terms(
            torch.cat([x[known], unlabelled.repeat_interleave(self.n_classes, dim=0)]),
            torch.cat([labels[known], every_class.repeat(len(unlabelled))]),
        )
        bound = -(terms.recon + state.kl_weight * terms.kl)
        n_known = len(labels) - len(unlabelled)
        bounds = x.new_zeros(len(x), self.n_classes, dtype=bound.dtype)
        bounds[known, labels[known]] = bound[:n_known]
        bounds[~known] = bound[n_known:].view(len(unlabelled), self.n_classes)
        return bounds

    def forward(self, view: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        labels = view.labels
        n_train = state.dataset_size
        n_labelled = n_train if self.n_labelled is None else self.n_labelled
        if n_labelled < n_train and (labels != UNLABELLED).all():
            x = torch.cat([x, x])
            labels = torch.cat([labels, torch.full_like(labels, UNLABELLED)])
        logits = self.classifier(x)
        bounds = self.bounds(view.model, x, labels, state)
        terms = m2_terms(bounds, logits, labels, n_labelled, n_train, self.alpha)
        known = labels != UNLABELLED
        logged = {}
        if known.any():
            right = logits[known].argmax(dim=-1) == labels[known]
            logged |= {
                "labelled_bound": terms.labelled.detach(),
                "classifier_ce": terms.cross_entropy.detach(),
                "accuracy": right.float().mean(),
            }
        if not known.all():
            logged["unlabelled_bound"] = terms.unlabelled.detach()
        return ObjectiveOutput(terms.loss, logged=logged)
