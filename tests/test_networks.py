import pytest
import torch

from tests.helpers import part
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.networks.conv import ConvNetwork
from vae_lightning.networks.mlp import MLPNetwork


@pytest.mark.parametrize("network", [MLPNetwork, ConvNetwork])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_forward_and_backward_for_every_network_and_image_shape(network, channels, size):
    """The encoder gives the posterior's parameters (here 2 x 7), the decoder the likelihood's
    (here 2 per image channel)."""
    image_shape = (channels, size, size)
    net = network(image_shape, 7, 14, 2 * channels, hidden_dims=[8, 16])
    x = torch.rand(3, *image_shape)
    h = net.encode(x)
    assert h.shape == (3, 14)
    out = net.decode(h[:, :7])
    assert out.shape == (3, 2 * channels, size, size)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())


@pytest.mark.parametrize("latent_dim", [1, 2, 33])
def test_any_positive_latent_dim(latent_dim):
    network = part("network", "conv", hidden_dims=[8, 16], dense_dim=16)
    model = VAE(image_shape=(1, 32, 32), network=network, latent_dim=latent_dim)
    terms = model.elbo_terms(torch.rand(4, 1, 32, 32))
    terms.loss().backward()
    assert terms.recon.shape == (4,)


def test_conv_network_refuses_sizes_it_cannot_halve():
    with pytest.raises(ConfigError, match="model.network.hidden_dims=.* divisible by 8"):
        ConvNetwork((1, 28, 28), 4, 8, 1, hidden_dims=[8, 16, 32])
