import math

import pytest
import torch

from vae_lightning.config import check_config
from vae_lightning.disentanglement import mig, mutual_information
from vae_lightning.errors import ConfigError
from vae_lightning.metrics import active_units, bits_per_dim


def test_active_units_count_dims_whose_posterior_mean_varies_over_the_data():
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 0.2, 0.05, 0.0, 3.0])  # variances 1, 0.04, 0.0025, 0, 9
    mu = torch.randn(5000, 5) * scales + torch.tensor([0.0, 5.0, -5.0, 2.0, 0.0])
    assert active_units(mu) == 3
    assert active_units(mu, threshold=2.0) == 1


def test_mutual_information_of_a_variable_with_itself_is_its_entropy():
    codes = torch.arange(8).repeat(100)  # uniform over 8 values: H = log 8
    assert mutual_information(codes, codes).item() == pytest.approx(math.log(8))
    assert mutual_information(codes, torch.zeros_like(codes)).item() == pytest.approx(0.0)


class TestMIG:
    n = 4000

    def factors(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.stack(
            [
                torch.randint(4, (self.n,), generator=g),
                torch.randint(5, (self.n,), generator=g),
                torch.zeros(self.n, dtype=torch.long),  # a constant factor carries no information
            ],
            dim=1,
        )

    def noisy(self, values: torch.Tensor, scale: float = 0.01) -> torch.Tensor:
        return values.float() + scale * torch.randn(len(values))

    def test_one_latent_per_factor_scores_one(self):
        torch.manual_seed(0)
        f = self.factors()
        latents = torch.stack([torch.randn(self.n), self.noisy(f[:, 1]), self.noisy(f[:, 0])], 1)
        assert mig(latents, f) == pytest.approx(1.0, abs=0.01)

    def test_a_factor_split_over_two_equal_latents_has_no_gap(self):
        torch.manual_seed(0)
        f = self.factors()
        latents = torch.stack([self.noisy(f[:, 0]), self.noisy(f[:, 0]), self.noisy(f[:, 1])], 1)
        assert mig(latents, f) == pytest.approx(0.5, abs=0.01)  # factor 0 gap 0, factor 1 gap 1

    def test_latents_unrelated_to_the_factors_score_near_zero(self):
        torch.manual_seed(0)
        assert mig(torch.randn(self.n, 4), self.factors()) < 0.02


def test_bits_per_dim_converts_nats_per_image():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "override",
    [
        "model.kl_warmup=-1",
        "model.kl_warmup_unit=hours",
        "model.free_bits=-0.5",
        "eval.iwae_k=0",
    ],
)
def test_bad_remedy_and_eval_values_are_config_errors(tiny_config, override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(tiny_config(override))
