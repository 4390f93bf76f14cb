"""The benchmark scripts stay runnable: each at a tiny size, as a user would start it."""

import json

import pytest
import torch
from PIL import Image

from tests.helpers import FASHION_MNIST_SUBSET, run_script

pytestmark = pytest.mark.slow


def test_likelihood_table_script_trains_evaluates_and_compares_its_rows(tmp_path):
    result = run_script(
        "benchmarks/likelihood_table.py", "--rows", "vae", "vamp", "--epochs", "1",
        "--k", "10", "--test-images", "500", "--out", str(tmp_path),
        "--pseudo-inputs", "10", "data.size=600", f"data.root={FASHION_MNIST_SUBSET}",
        f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for title in ("VAE (k=1)", "VAE + VampPrior"):
        row = [line for line in lines if line.startswith(f"| {title} | ")][-1]
        nll_cell, elbo_cell, trained_cell = row.split("|")[2:5]
        nll, error = (float(part) for part in nll_cell.split("±"))
        assert 0 < error < nll <= float(elbo_cell) + 1.0  # IWAE is the tighter bound, up to noise
        assert "(k=100, 200 images)" in trained_cell  # train.py's own bound, on its 200 test images
    (difference,) = [line for line in lines if line.startswith("| VAE + VampPrior − VAE (k=1) |")]
    mean, error = (float(part) for part in difference.split("|")[2].split("±"))
    assert abs(mean) < 50 and error > 0
    assert (tmp_path / "vamp-eval" / "iwae_nll_per_image.pt").is_file()


def test_hierarchical_cifar10_gpu_command_runs_on_cpu_at_a_tiny_size(tmp_path):
    """The GPU command, with the CPU, a folder of 3-channel 32x32 images (CIFAR-10's shape) and a
    tiny model in place of the GPU, CIFAR-10 and the full model (bf16 kept: Lightning autocasts
    on the CPU too)."""
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = torch.randint(
        0, 256, (96, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    for index, image in enumerate(pixels.numpy()):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    result = run_script(
        "benchmarks/hierarchical_cifar10.py", "--out", str(tmp_path / "run"), "data=folder",
        f"data.root={folder}", "data.channels=3", "data.batch_size=32", "trainer=cpu",
        "trainer.max_epochs=2", "model.network.hidden_dims=[4,8]",
        "model.network.latent_dims=[2,2,2,2]", "model.latent_dim=2",
        "eval.iwae_k=2", "callbacks.pictures=null", f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (per_epoch,) = [line for line in result.stdout.splitlines() if line.startswith("seconds per")]
    assert len(per_epoch.split(":")[1].split(",")) == 2  # both epochs timed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["test/kl_per_layer"]) == 4


def test_process_speed_script_runs_the_three_programs_and_writes_its_table(tmp_path):
    result = run_script(
        "benchmarks/process_speed.py", "--rounds", "1", "--epochs", "2", "--workloads", "mlp",
        "--limit-batches", "2", "--threads", "1", "--out", str(tmp_path),
        "--set", f"data.root={FASHION_MNIST_SUBSET}",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "model.network.hidden_dims=[32]",
        "--variant", "no-logger=logger=null callbacks.nonfinite=null",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert table in result.stdout
    rounds = [line for line in table.splitlines() if line.startswith("| mlp | 1 |")]
    (row,) = [line for line in rounds if "[no-logger]" in line]  # the rest: the variant's
    order, *numbers = [cell.strip() for cell in row.split("|")[3:-1]]
    assert "[no-logger]" in order and sorted(order.replace("[no-logger]", "")) == ["a", "b", "c"]
    a, b, c, c_b, b_a, c_a = map(float, numbers)
    assert min(a, b, c) > 0
    # the ratios are of the unrounded speeds, the table shows whole images per second
    assert (c_b, b_a, c_a) == pytest.approx((c / b, b / a, c / a), rel=0.02)
    medians = [line for line in table.splitlines() if line.startswith("| mlp | median")]
    summary, variant_summary = medians
    assert f"{c_b:.3f} ({c_b:.3f}-{c_b:.3f})" in summary  # one round: its ratio is the median
    # each program trained and wrote its checkpoints where the benchmark put it
    assert (tmp_path / "mlp-a-1" / "last.pt").is_file()
    assert (tmp_path / "mlp-b-1" / "last.ckpt").is_file()
    assert (tmp_path / "mlp-c-1" / "checkpoints" / "last.ckpt").is_file()
    # the variant: train.py with its overrides, its speed against (b) and (c)
    (row,) = [line for line in table.splitlines() if line.startswith("| mlp | 1 | no-logger |")]
    v, v_b, v_c = map(float, [cell.strip() for cell in row.split("|")[4:-1]])
    assert v > 0 and (v_b, v_c) == pytest.approx((v / b, v / c), rel=0.02)
    assert f"| no-logger | | {v_b:.3f} ({v_b:.3f}-{v_b:.3f}) |" in variant_summary
    variant_dir = tmp_path / "mlp-c-no-logger-1"
    assert not (variant_dir / "tensorboard").exists() and (variant_dir / "metrics.json").is_file()


def test_zoo_script_trains_its_rows_and_compares_them_seed_by_seed(tmp_path):
    """Two rows over two seeds, then the VQ-VAE's two stages beside them (the finished runs are
    not trained again), at a tiny size; then that command again, which trains nothing."""
    common = [
        "--minutes", "0.1", "--k", "10", "--test-images", "100", "--samples", "50",
        "--out", str(tmp_path / "zoo"), "data.size=600", f"data.root={FASHION_MNIST_SUBSET}",
        f"data.cache_dir={tmp_path / 'cache'}", "model.network.hidden_dims=[8,16]",
        "model.latent_dim=4",
    ]  # fmt: skip
    result = run_script("benchmarks/zoo.py", "--rows", "vae", "iwae", "--seeds", "0", "1", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("python train.py") == 4
    with_vq = ["benchmarks/zoo.py", "--rows", "vae", "iwae", "vqvae", "--seeds", "0", *common]
    result = run_script(*with_vq)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("python train.py") == 2  # the VQ-VAE's stages only
    lines = result.stdout.splitlines()
    (vae,) = [line for line in lines if line.startswith("| VAE | 0, 1 |")]
    nll, elbo = (cell.split("±") for cell in vae.split("|")[3:5])
    assert 0 < float(nll[0]) <= float(elbo[0]) + 1.0 and float(nll[1]) >= 0
    (vq,) = [line for line in lines if line.startswith("| VQ-VAE + PixelCNN prior³ | 0 |")]
    assert vq.split("|")[7].strip() == "—"  # FID of mixture samples: none for discrete codes
    # the prior's stage ran from the first stage's weights
    assert (tmp_path / "zoo" / "vqvae" / "seed0" / "stage1" / "metrics.json").is_file()

    (ordering,) = [line for line in lines if line.startswith("| IWAE below VAE")]
    shown, error, seeds, verdict = (cell.strip() for cell in ordering.split("|")[2:6])
    differences = [
        (
            torch.load(tmp_path / "zoo" / "iwae" / f"seed{seed}" / "iwae_nll_per_image.pt")
            - torch.load(tmp_path / "zoo" / "vae" / f"seed{seed}" / "iwae_nll_per_image.pt")
        ).mean()
        for seed in (0, 1)
    ]
    mean = torch.stack(differences).mean().item()
    assert shown.startswith(f"{mean:+.2f} ± ") and seeds == "0, 1" and float(error) > 0
    signs = {bool(difference < 0) for difference in differences}
    expected = {True: "holds in every seed", False: "reversed in every seed"}
    assert verdict == (expected[signs.pop()] if len(signs) == 1 else "mixed over the seeds")

    again = run_script(*with_vq)
    assert again.returncode == 0 and "python train.py" not in again.stdout
    table = result.stdout.index("| model |")
    assert again.stdout[again.stdout.index("| model |") :] == result.stdout[table:]
