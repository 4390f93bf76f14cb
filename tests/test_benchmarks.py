"""The benchmark scripts stay runnable: each at a tiny size, as a user would start it."""

import pytest

from tests.helpers import FASHION_MNIST_SUBSET, run_script

pytestmark = pytest.mark.slow


def test_likelihood_table_script_trains_evaluates_and_compares_its_rows(tmp_path):
    result = run_script(
        "benchmarks/likelihood_table.py", "--rows", "vae", "vamp", "--epochs", "1",
        "--k", "10", "--test-images", "500", "--out", str(tmp_path),
        "data.size=600", "model.n_pseudo_inputs=10", f"data.root={FASHION_MNIST_SUBSET}",
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


def test_process_speed_script_runs_the_three_programs_and_writes_its_table(tmp_path):
    result = run_script(
        "benchmarks/process_speed.py", "--rounds", "1", "--epochs", "2", "--workloads", "mlp",
        "--limit-batches", "2", "--threads", "1", "--out", str(tmp_path),
        "--set", f"data.root={FASHION_MNIST_SUBSET}",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "model.hidden_dims=[32]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert table in result.stdout
    (row,) = [line for line in table.splitlines() if line.startswith("| mlp | 1 |")]
    order, *numbers = [cell.strip() for cell in row.split("|")[3:-1]]
    assert sorted(order) == ["a", "b", "c"]
    a, b, c, c_b, b_a, c_a = map(float, numbers)
    assert min(a, b, c) > 0
    # the ratios are of the unrounded speeds, the table shows whole images per second
    assert (c_b, b_a, c_a) == pytest.approx((c / b, b / a, c / a), rel=0.02)
    (summary,) = [line for line in table.splitlines() if line.startswith("| mlp | median")]
    assert f"{c_b:.3f} ({c_b:.3f}-{c_b:.3f})" in summary  # one round: its ratio is the median
    # each program trained and wrote its checkpoints where the benchmark put it
    assert (tmp_path / "mlp-a-1" / "last.pt").is_file()
    assert (tmp_path / "mlp-b-1" / "last.ckpt").is_file()
    assert (tmp_path / "mlp-c-1" / "checkpoints" / "last.ckpt").is_file()
