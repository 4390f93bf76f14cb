"""The VQ-VAE's quantiser checked against exact answers: its EMA update is the formula worked by
hand, the straight-through gradient is the decoder's, codes enough for the data reconstruct it
exactly, dead codes restart at encoder outputs, the perplexity counts equally used codes, and a
checkpoint holds the codebook's state.
"""

import copy

import pytest
import torch

from vae_lightning.errors import ConfigError
from vae_lightning.posteriors.vector_quantizer import VectorQuantizer

F64 = torch.float64


def vector_map(vectors: list[list[float]]) -> torch.Tensor:
    """One encoder map (1, D, 1, n) whose n positions hold the given D-vectors."""
    return torch.tensor(vectors, dtype=F64).T.reshape(1, -1, 1, len(vectors))


def quantizer(codebook: list[list[float]], cluster_size: list[float], code_sum, **kwargs):
    """A float64 quantiser in a given EMA state."""
    vq = VectorQuantizer(latent_dim=len(codebook[0]), n_codes=len(codebook), **kwargs).double()
    vq.codebook.copy_(torch.tensor(codebook, dtype=F64))
    vq.cluster_size.copy_(torch.tensor(cluster_size, dtype=F64))
    vq.code_sum.copy_(torch.tensor(code_sum, dtype=F64))
    return vq


def test_the_ema_update_equals_its_formula():
    vq = quantizer(
        codebook=[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]],
        cluster_size=[2.0, 1.0, 0.5],
        code_sum=[[0.2, 0.4], [9.0, 0.5], [0.1, 4.0]],
        decay=0.9,
        dead_code_threshold=0,
        epsilon=1e-3,
    )
    z_e = vector_map([[1.0, 0.0], [-1.0, 1.0], [9.0, 1.0], [0.5, -0.5]])
    codes = vq(z_e).codes
    assert codes.tolist() == [[[0, 0, 1, 0]]]
    # Code 0 got three vectors summing to (0.5, 0.5), code 1 one, (9, 1), code 2 none.
    sizes = [0.9 * 2.0 + 0.1 * 3, 0.9 * 1.0 + 0.1 * 1, 0.9 * 0.5 + 0.1 * 0]
    sums = [[0.9 * 0.2 + 0.1 * 0.5, 0.9 * 0.4 + 0.1 * 0.5], [0.9 * 9.0 + 0.1 * 9, 0.9 * 0.5 + 0.1]]
    sums.append([0.9 * 0.1, 0.9 * 4.0])
    n = sum(sizes)
    smoothed = [(size + 1e-3) / (n + 3 * 1e-3) * n for size in sizes]
    codebook = [[s / size for s in code_sum] for code_sum, size in zip(sums, smoothed, strict=True)]
    exact = {"rtol": 1e-14, "atol": 0}
    torch.testing.assert_close(vq.cluster_size, torch.tensor(sizes, dtype=F64), **exact)
    torch.testing.assert_close(vq.code_sum, torch.tensor(sums, dtype=F64), **exact)
    torch.testing.assert_close(vq.codebook, torch.tensor(codebook, dtype=F64), **exact)


def test_evaluation_leaves_the_codebook_alone():
    vq = quantizer([[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]]).eval()
    before = copy.deepcopy(vq.state_dict())
    vq(vector_map([[0.2, 0.1], [5.0, 5.0]]))
    for name, buffer in vq.state_dict().items():
        assert torch.equal(buffer, before[name]), name


def toy_decoder(z: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear map of a (B, 3, h, w) map, so its gradient depends on where it is taken."""
    weight = torch.linspace(-1.0, 1.0, 12, dtype=F64).reshape(4, 3, 1, 1)
    return torch.tanh(torch.nn.functional.conv2d(z, weight)).pow(2)


@pytest.mark.parametrize("commitment", [0.0, 0.25])
def test_the_encoder_gets_the_decoders_gradient_at_the_codes_plus_the_commitments(commitment):
    torch.manual_seed(0)
    vq = VectorQuantizer(latent_dim=3, n_codes=5, commitment=commitment).double().eval()
    z_e = torch.randn(2, 3, 2, 2, dtype=F64, requires_grad=True)
    quantized = vq(z_e)
    (toy_decoder(quantized.z_q).sum() + quantized.commitment_loss.sum()).backward()

    e = vq.lookup(quantized.codes).requires_grad_()
    toy_decoder(e).sum().backward()
    assert e.grad.abs().min() > 0
    expected = e.grad + 2 * commitment * (z_e.detach() - e.detach())
    torch.testing.assert_close(z_e.grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(quantized.z_q, e.detach(), rtol=0, atol=1e-12)


def test_as_many_codes_as_inputs_reconstruct_them_exactly():
    """Identity encoder and decoder: the quantiser alone must give each of 4 distinct vectors its
    own code at exactly that vector (up to the Laplace smoothing, 1e-5 relative)."""
    torch.manual_seed(0)
    distinct = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.5], [0.5, 0.5, 0.5]])
    batch = distinct.repeat(4, 1).reshape(16, 3, 1, 1)
    vq = VectorQuantizer(latent_dim=3, n_codes=8)
    for _ in range(300):
        vq(batch)
    quantized = vq.eval()(batch)
    assert len(set(quantized.codes[:4].flatten().tolist())) == 4
    torch.testing.assert_close(quantized.z_q, batch, rtol=0, atol=1e-4)


def test_mixed_precision_leaves_the_codebook_in_full_precision():
    def trained_codebook(autocast: bool) -> torch.Tensor:
        torch.manual_seed(0)
        vq = VectorQuantizer(latent_dim=4, n_codes=3)
        batch = torch.randn(300, 4, 1, 1) / 3 + 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            assert vq(batch).z_q.dtype == torch.float32
        return vq.codebook

    assert torch.equal(trained_codebook(autocast=True), trained_codebook(autocast=False))


def test_a_dead_code_restarts_at_an_encoder_output():
    state = {
        "codebook": [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [100.0, 100.0]],
        "cluster_size": [5.0, 5.0, 5.0, 0.5],
        "code_sum": [[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [50.0, 50.0]],
    }
    vq = quantizer(**state, dead_code_threshold=1.0)
    no_restarts = quantizer(**state, dead_code_threshold=0)
    z_e = vector_map([[0.1, 0.2], [3.9, 0.3], [0.2, 4.2], [-0.3, 0.1], [4.4, -0.2]])
    torch.manual_seed(0)
    vq(z_e)
    no_restarts(z_e)

    outputs = z_e[0].flatten(1).T
    assert (vq.codebook[3] == outputs).all(1).any(), vq.codebook[3]
    assert vq.cluster_size[3] == 1.0
    assert torch.equal(vq.code_sum[3], vq.codebook[3])
    for name in ("codebook", "cluster_size", "code_sum"):
        assert torch.equal(getattr(vq, name)[:3], getattr(no_restarts, name)[:3]), name


def test_restarts_repeat_from_the_global_seed():
    def restarted_codebook():
        torch.manual_seed(1)
        vq = VectorQuantizer(latent_dim=2, n_codes=16)
        vq(torch.randn(4, 2, 3, 3))
        return vq.codebook

    assert torch.equal(restarted_codebook(), restarted_codebook())


def test_perplexity_and_usage_count_the_codes_chosen():
    codebook = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    vq = quantizer(codebook, [1.0] * 4, codebook).eval()
    each_twice = vq(vector_map(codebook * 2))
    torch.testing.assert_close(each_twice.perplexity, torch.tensor(4.0, dtype=F64))
    assert each_twice.usage == 1.0
    one = vq(vector_map([[0.9, 0.1]] * 8))
    torch.testing.assert_close(one.perplexity, torch.tensor(1.0, dtype=F64))
    assert one.usage == 0.25


def test_a_state_dict_carries_the_ema_state_into_a_new_quantizer():
    torch.manual_seed(0)
    trained = VectorQuantizer(latent_dim=2, n_codes=6)
    for _ in range(3):
        trained(torch.randn(4, 2, 3, 3))
    state = trained.state_dict()
    assert set(state) == {"codebook", "cluster_size", "code_sum"}
    assert state["cluster_size"].sum() > 0

    torch.manual_seed(1)
    resumed = VectorQuantizer(latent_dim=2, n_codes=6)
    resumed.load_state_dict(state)
    batch = torch.randn(4, 2, 3, 3)
    for vq in (trained, resumed):
        torch.manual_seed(2)
        vq(batch)
    for name, buffer in trained.state_dict().items():
        assert torch.equal(buffer, resumed.state_dict()[name]), name


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_codes", 1),
        ("n_codes", 8.0),
        ("n_codes", True),
        ("commitment", -0.1),
        ("decay", 1.0),
        ("decay", -0.5),
        ("dead_code_threshold", -1),
        ("epsilon", 0),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_its_full_key(key, value):
    with pytest.raises(ConfigError, match=rf"^model\.posterior\.{key}={value!r} is not allowed"):
        VectorQuantizer(latent_dim=2, **{key: value})
