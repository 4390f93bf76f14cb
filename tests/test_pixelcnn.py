"""The gated PixelCNN prior over code maps checked against exact answers: each position's logits
depend on every code before it in raster order and on none after, its log_prob is a normalised
distribution over all maps, and its samples are drawn from that distribution."""

import itertools
import math

import pytest
import torch

from vae_lightning.errors import ConfigError
from vae_lightning.priors.pixelcnn import GatedPixelCNN

F64 = torch.float64


def tiny_prior(n_codes: int, seed: int = 0) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(n_codes, channels=8, n_layers=3, kernel_size=3).double()


def test_each_positions_logits_depend_on_every_earlier_code_and_on_no_later_one():
    prior = tiny_prior(n_codes=5)
    codes = torch.randint(5, (1, 4, 4))
    logits = prior.logits(codes).flatten(2)
    for changed in range(16):
        other = codes.clone()
        other.view(-1)[changed] = (codes.view(-1)[changed] + 1) % 5
        other_logits = prior.logits(other).flatten(2)
        for position in range(16):
            same = torch.equal(logits[..., position], other_logits[..., position])
            assert same == (position <= changed), (changed, position)


def all_maps(n_codes: int, shape: tuple[int, int]) -> torch.Tensor:
    """Every code map of the shape, (n_codes ** positions, *shape)."""
    maps = list(itertools.product(range(n_codes), repeat=math.prod(shape)))
    return torch.tensor(maps).view(-1, *shape)


def test_log_prob_is_a_normalised_distribution_over_all_maps():
    maps = all_maps(3, (2, 2))
    assert len(maps) == 81
    log_prob = tiny_prior(n_codes=3).log_prob(maps)
    assert log_prob.shape == (81,)
    assert log_prob.max() - log_prob.min() > 0.1
    torch.testing.assert_close(
        log_prob.logsumexp(0), torch.tensor(0.0, dtype=F64), atol=1e-12, rtol=0
    )


def test_samples_follow_the_distribution_of_log_prob():
    prior = tiny_prior(n_codes=3, seed=1)
    # Weights three times their initial scale make each code depend strongly on the codes before
    # it (the likeliest map has p = 0.28): drawn in any order but raster order, the samples miss
    # by more than 15 standard errors.
    with torch.no_grad():
        for weight in prior.parameters():
            if weight.dim() > 1:
                weight.mul_(3)
        probs = prior.log_prob(all_maps(3, (2, 2))).exp()
    n = 4_000
    samples = prior.sample_codes(n, (2, 2), generator=torch.Generator().manual_seed(0))
    index = (samples.flatten(1) * torch.tensor([27, 9, 3, 1])).sum(1)
    frequencies = torch.bincount(index, minlength=81) / n
    # Four standard errors of each map's frequency.
    assert ((frequencies - probs).abs() <= 4 * (probs * (1 - probs) / n).sqrt()).all()


def test_sampling_with_a_seeded_generator_repeats():
    prior = tiny_prior(n_codes=4)
    first, second = (
        prior.sample_codes(3, (3, 2), generator=torch.Generator().manual_seed(7)) for _ in range(2)
    )
    assert first.shape == (3, 3, 2)
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_codes", 1),
        ("channels", 0),
        ("n_layers", 2.5),
        ("kernel_size", 1),
        ("kernel_size", 4),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_its_full_key(key, value):
    settings = {"n_codes": 8, key: value}
    with pytest.raises(ConfigError, match=rf"^model\.prior\.{key}={value!r} is not allowed"):
        GatedPixelCNN(**settings)
