import pytest
import torch

from vae_lightning.module import VAE
from vae_lightning.networks import build_networks


@pytest.mark.parametrize("network", ["mlp", "conv"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_forward_and_backward_for_every_network_and_image_shape(network, channels, size):
    image_shape = (channels, size, size)
    encoder, decoder = build_networks(network, image_shape, 7, [8, 16], 32)
    x = torch.rand(3, *image_shape)
    mu, logvar = encoder(x)
    assert mu.shape == logvar.shape == (3, 7)
    out = decoder(mu)
    assert out.shape == (3, *image_shape)
    out.sum().backward()
    for net in (encoder, decoder):
        assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())


@pytest.mark.parametrize("latent_dim", [1, 2, 33])
def test_any_positive_latent_dim(latent_dim):
    model = VAE(image_shape=(1, 32, 32), latent_dim=latent_dim, hidden_dims=(8, 16), dense_dim=16)
    terms = model.elbo_terms(torch.rand(4, 1, 32, 32))
    terms.loss().backward()
    assert terms.recon.shape == (4,)


def test_conv_network_refuses_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 8"):
        build_networks("conv", (1, 28, 28), 4, [8, 16, 32], 32)
