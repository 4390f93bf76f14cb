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
"""

from typing import NamedTuple

import torch

from vae_lightning.data.classes import UNLABELLED


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
