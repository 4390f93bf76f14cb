"""The benchmark scripts stay runnable: each at a tiny size, as a user would start it."""

import pytest

from tests.helpers import run_script

pytestmark = pytest.mark.slow


def test_likelihood_table_script_trains_evaluates_and_prints_its_rows(tmp_path):
    result = run_script(
        "benchmarks/likelihood_table.py", "--rows", "vae", "iwae5_vamp", "--epochs", "1",
        "--k", "10", "--test-images", "500", "--out", str(tmp_path),
        "data.size=600", "model.n_pseudo_inputs=10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    table = rows[-3:]  # the header and the two rows of the last table printed
    assert table[1].startswith("| VAE (k=1) | ") and table[2].startswith("| IWAE k=5 + VampPrior |")
    for row in table[1:]:
        nll, neg_elbo = (float(cell) for cell in row.split("|")[2:4])
        assert "(k=100, 600 images)" in row  # train.py's own bound, on its 600 test images
        assert 0 < nll <= neg_elbo + 1.0  # the IWAE bound is the tighter one, up to noise
    assert (tmp_path / "vae" / "metrics.json").is_file()
    assert (tmp_path / "iwae5_vamp-eval" / "metrics.json").is_file()
