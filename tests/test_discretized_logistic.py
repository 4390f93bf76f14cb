"""The discretised logistic mixture checked against exact answers: the probabilities of the 256
values of a pixel sum to one (RGB: each channel's given the channels before it), log_prob agrees
with a plain loop over components, leading sample dims broadcast, mean is the mixture's expected
value, and a confident wrong mean costs a finite log probability in float32; and it trains on real
8-bit images through the commands.
"""

import json
import math

import pytest
import torch

from tests.helpers import FASHION_MNIST_SUBSET, TINY, run_script
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods.discretized_logistic import DiscretizedLogisticMixture

F64 = torch.float64
ALL_VALUES = torch.arange(256, dtype=F64) / 255


def random_params(likelihood, *leading, seed=0, dtype=F64):
    """Parameters of 1x1 images that reach the edge cases: means beyond [-1, 1], log-scales under
    the floor of -7 and wide logistics whose tails fill the edge bins."""
    generator = torch.Generator().manual_seed(seed)
    n, c = likelihood.n_mixtures, likelihood.n_channels
    logits = 2 * torch.randn(*leading, n, 1, 1, generator=generator, dtype=dtype)
    means = 1.5 * torch.randn(*leading, c * n, 1, 1, generator=generator, dtype=dtype)
    log_scales = torch.empty(*leading, c * n, 1, 1, dtype=dtype).uniform_(
        -9, 2, generator=generator
    )
    n_alphas = likelihood.out_channels - n - 2 * c * n
    alphas = 2 * torch.randn(*leading, n_alphas, 1, 1, generator=generator, dtype=dtype)
    return torch.cat([logits, means, log_scales, alphas], dim=-3)


def probabilities(likelihood, params, pixels):
    """p(pixel) for each parameter set (P, 1, out, 1, 1) and each pixel (V, C): (P, V)."""
    return likelihood.log_prob(params, pixels.reshape(-1, likelihood.n_channels, 1, 1)).exp()


def test_grey_probabilities_of_the_256_values_sum_to_one():
    likelihood = DiscretizedLogisticMixture((1, 1, 1), n_mixtures=3)
    params = random_params(likelihood, 64, 1)
    totals = probabilities(likelihood, params, ALL_VALUES).sum(dim=-1)
    torch.testing.assert_close(totals, torch.ones(64, dtype=F64), rtol=0, atol=1e-5)


def test_rgb_each_channel_given_the_channels_before_sums_to_one():
    """Summing out the last channel of a C-channel mixture leaves the (C-1)-channel mixture on the
    same parameters: sum_b p(r, g, b) = p(r, g) and sum_g p(r, g) = p(r), with sum_r p(r) = 1,
    make the 256^3 probabilities sum to one; checked for given values that include the edge bins
    (all 256^3 would take a minute)."""
    n = 3
    rgb = DiscretizedLogisticMixture((3, 1, 1), n_mixtures=n)
    rg = DiscretizedLogisticMixture((2, 1, 1), n_mixtures=n)
    red = DiscretizedLogisticMixture((1, 1, 1), n_mixtures=n)
    params = random_params(rgb, 4, 1)
    logits, means, log_scales, alphas = params.split([n, 3 * n, 3 * n, 3 * n], dim=-3)
    # The channels are laid out channel by channel, the first alpha being G's on R.
    rg_params = torch.cat([logits, means[..., : 2 * n, :, :], log_scales[..., : 2 * n, :, :],
                           alphas[..., :n, :, :]], dim=-3)  # fmt: skip
    red_params = torch.cat([logits, means[..., :n, :, :], log_scales[..., :n, :, :]], dim=-3)

    given_values = [0, 1, 100, 254, 255]
    given = torch.tensor(given_values, dtype=F64) / 255
    pairs = torch.cartesian_prod(given, given)  # (r, g)
    triples = torch.cat(
        [pairs.repeat_interleave(256, dim=0), ALL_VALUES.repeat(len(pairs)).unsqueeze(-1)], dim=-1
    )
    summed_b = probabilities(rgb, params, triples).unflatten(-1, (len(pairs), 256)).sum(dim=-1)
    torch.testing.assert_close(summed_b, probabilities(rg, rg_params, pairs), rtol=0, atol=1e-5)

    r_then_all = torch.cartesian_prod(given, ALL_VALUES)
    summed_g = probabilities(rg, rg_params, r_then_all).unflatten(-1, (len(given), 256)).sum(-1)
    p_red = probabilities(red, red_params, ALL_VALUES)
    torch.testing.assert_close(summed_g, p_red[:, given_values], rtol=0, atol=1e-5)
    torch.testing.assert_close(p_red.sum(dim=-1), torch.ones(4, dtype=F64), rtol=0, atol=1e-5)


def loop_log_prob(params, x, n_mixtures):
    """log p(x) for params (B, out, H, W), x (B, C, H, W) as the formula reads, one component,
    channel and pixel at a time."""
    batch, channels, height, width = x.shape
    couplings = [(c, j) for c in range(channels) for j in range(c)]
    result = torch.zeros(batch, dtype=F64)
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                p = params[b, :, h, w]
                weights = torch.softmax(p[:n_mixtures], dim=0)
                means = p[n_mixtures : (1 + channels) * n_mixtures].reshape(channels, n_mixtures)
                log_scales = p[(1 + channels) * n_mixtures : (1 + 2 * channels) * n_mixtures]
                log_scales = log_scales.reshape(channels, n_mixtures)
                alphas = torch.tanh(p[(1 + 2 * channels) * n_mixtures :]).reshape(-1, n_mixtures)
                k = torch.round(x[b, :, h, w] * 255)
                y = 2 * k / 255 - 1
                probability = 0.0
                for m in range(n_mixtures):
                    component = weights[m]
                    for c in range(channels):
                        mu = means[c, m] + sum(
                            alphas[i, m] * y[j] for i, (row, j) in enumerate(couplings) if row == c
                        )
                        s = torch.exp(torch.clamp(log_scales[c, m], min=-7.0))
                        upper = 1.0 if k[c] == 255 else torch.sigmoid((y[c] + 1 / 255 - mu) / s)
                        lower = 0.0 if k[c] == 0 else torch.sigmoid((y[c] - 1 / 255 - mu) / s)
                        component = component * (upper - lower)
                    probability = probability + component
                result[b] += torch.log(probability)
    return result


@pytest.mark.parametrize("channels", [1, 3])
def test_log_prob_agrees_with_a_loop_over_components(channels):
    torch.manual_seed(1)
    n = 4
    likelihood = DiscretizedLogisticMixture((channels, 3, 2), n_mixtures=n)
    params = torch.randn(2, likelihood.out_channels, 3, 2, dtype=F64)
    params[:, n : (1 + channels) * n] *= 0.7  # means near the data, so no bin is improbable
    params[:, (1 + channels) * n : (1 + 2 * channels) * n] -= 2.5  # scales near 0.1
    x = torch.randint(0, 256, (2, channels, 3, 2)).to(F64) / 255
    x[0, :, 0, 0], x[1, :, 2, 1] = 0.0, 1.0  # the edge bins
    # A dominant first component at one pixel, its first channel's logistic under the log-scale
    # floor, a fifth of a bin off the value, its other channels wide.
    first_log_scales = (1 + channels) * n + n * torch.arange(channels)
    params[1, 0, 1, 0] = 6.0
    params[1, n, 1, 0] = 2 * x[1, 0, 1, 0] - 1 + 0.4 / 255
    params[1, first_log_scales, 1, 0] = torch.tensor([-9.0, 0.0, 0.0], dtype=F64)[:channels]
    torch.testing.assert_close(
        likelihood.log_prob(params, x), loop_log_prob(params, x, n), rtol=0, atol=1e-6
    )


def test_leading_sample_dims_broadcast_over_the_batch():
    likelihood = DiscretizedLogisticMixture((3, 4, 5), n_mixtures=2)
    params = torch.randn(6, 2, likelihood.out_channels, 4, 5)
    x = torch.rand(2, 3, 4, 5)
    log_p = likelihood.log_prob(params, x)
    assert log_p.shape == (6, 2)
    torch.testing.assert_close(log_p[4], likelihood.log_prob(params[4], x))
    assert likelihood.mean(params).shape == (6, 2, 3, 4, 5)


@pytest.mark.parametrize("n_mixtures", [0, -2, 2.5, "10", True])
def test_n_mixtures_must_be_a_positive_integer(n_mixtures):
    with pytest.raises(ConfigError, match=r"model\.likelihood\.n_mixtures=.* a positive integer"):
        DiscretizedLogisticMixture((1, 28, 28), n_mixtures=n_mixtures)


def test_out_channels_as_pixel_cnn_pp():
    assert DiscretizedLogisticMixture((3, 32, 32), n_mixtures=10).out_channels == 100
    assert DiscretizedLogisticMixture((1, 28, 28), n_mixtures=10).out_channels == 30


def test_mean_of_one_narrow_component_is_its_coupled_mean():
    likelihood = DiscretizedLogisticMixture((3, 1, 1), n_mixtures=1)
    means = torch.tensor([-0.4, 0.2, 0.1], dtype=F64)
    alphas = torch.tensor([0.5, -1.0, 0.3], dtype=F64)  # G|R, B|R, B|G, before tanh
    params = torch.cat([torch.zeros(1), means, torch.full((3,), -9.0), alphas]).reshape(1, 10, 1, 1)
    a = torch.tanh(alphas)
    green = means[1] + a[0] * means[0]
    blue = means[2] + a[1] * means[0] + a[2] * green
    expected = (torch.stack([means[0], green, blue]) + 1) / 2
    torch.testing.assert_close(likelihood.mean(params).flatten(), expected)


def test_mean_of_a_grey_mixture_is_its_expected_value():
    """Wide enough for rounding to be unbiased and inside [-1, 1]: the mean over the 256 values
    weighted by log_prob's probabilities; a narrow component on a value takes nearly all mass."""
    likelihood = DiscretizedLogisticMixture((1, 1, 1), n_mixtures=3)
    params = torch.tensor([0.3, -1.0, 1.2, -0.5, 0.1, 0.4, -3.5, -3.0, -4.0], dtype=F64)
    params = params.reshape(1, 1, 9, 1, 1)
    p = probabilities(likelihood, params, ALL_VALUES).flatten()
    torch.testing.assert_close(
        likelihood.mean(params).flatten(),
        (p * ALL_VALUES).sum(dim=0, keepdim=True),
        rtol=0,
        atol=1e-5,
    )

    narrow = torch.tensor([0.0, 2 * 77 / 255 - 1, -7.0], dtype=F64).reshape(1, 3, 1, 1)
    one = DiscretizedLogisticMixture((1, 1, 1), n_mixtures=1)
    torch.testing.assert_close(one.mean(narrow).flatten(), torch.tensor([77 / 255], dtype=F64))
    assert one.log_prob(narrow, one.mean(narrow)).exp() > 0.95


def test_a_confident_wrong_mean_has_a_finite_log_prob_and_gradient_in_float32():
    """Both CDFs round to 0 in float32 300 scales from the mean, where log(cdf+ - cdf-) is -inf."""
    likelihood = DiscretizedLogisticMixture((1, 1, 1), n_mixtures=1)
    params = torch.tensor([0.0, 1.0, -7.0]).reshape(1, 3, 1, 1).requires_grad_()
    x = torch.full((1, 1, 1, 1), 0.5)
    log_p = likelihood.log_prob(params, x)
    log_p.sum().backward()
    exact = likelihood.log_prob(params.detach().double(), x.double())
    assert math.isfinite(log_p.item()) and log_p.item() < -400
    torch.testing.assert_close(log_p.double(), exact, rtol=1e-6, atol=0)
    assert torch.isfinite(params.grad).all()


@pytest.mark.slow
def test_trains_on_8_bit_fashion_mnist_and_reports_bits_per_dim(tmp_path):
    """Through train.py on real 8-bit images, then eval.py and sample.py from the checkpoint
    alone: the test NLL in bits/dim is its nats over C H W ln 2, below the 8 bits of a uniform
    model after a few steps."""
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    result = run_script(
        "train.py", *TINY, "data=fashion_mnist", f"data.root={FASHION_MNIST_SUBSET}",
        "data.size=320", "data.binarize=null", f"data.cache_dir={tmp_path / 'cache'}",
        "model.likelihood=discretized_logistic", "model.likelihood.n_mixtures=3",
        "trainer.max_epochs=1", "eval.iwae_k=4", "callbacks.pictures=null",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    bits = trained["test/iwae_bpd"]
    assert bits == pytest.approx(trained["test/iwae_nll"] / (784 * math.log(2)), rel=1e-9)
    assert 0 < bits < 8
    result = run_script(
        "eval.py", f"ckpt_path={trained['best_checkpoint']}", "eval.iwae_k=4",
        "eval.iwae_images=64", f"hydra.run.dir={eval_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 < json.loads((eval_dir / "metrics.json").read_text())["test/iwae_bpd"] < 8
    result = run_script(
        "sample.py", f"ckpt_path={trained['best_checkpoint']}", "n=8", f"out={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "prior.png").is_file()
