"""The likelihood table: one-layer VAEs on dynamically binarised Fashion-MNIST, each trained with
another objective or prior on the same network, data, epochs and seed, and evaluated by IWAE.

    python benchmarks/likelihood_table.py                     # every row (see benchmarks/README.md)
    python benchmarks/likelihood_table.py --rows vae iwae5 --epochs 2 --test-images 1000

The network is the IWAE paper's one-stochastic-layer MLP (Burda et al. 2016, Table 1): two
deterministic layers of 200 units each side and 50 latents (ReLU here, tanh there). Each row is
`python train.py` as a user types it, with the common settings and the row's own, then
`python eval.py` of its best checkpoint with k importance samples (5000, the papers' protocol)
on the first `--test-images` test images (beside it, the k = 100 bound on all 10,000 that
train.py computes at its end), then the differences between rows image by image on those same
images. Runs go to outputs/likelihood_table/<row>/; the tables are printed as markdown.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from vae_lightning.cli import PER_IMAGE_NLL

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "data=fashion_mnist",
    "data.binarize=dynamic",
    "model=mlp",
    "model.network.hidden_dims=[200,200]",
    "model.latent_dim=50",
    "callbacks.pictures=null",
    "trainer.enable_progress_bar=false",
    "seed=0",
]
ROWS = {
    "vae": ("VAE (k=1)", []),
    "iwae5": ("IWAE k=5", ["model.objective=iwae", "model.objective.k=5"]),
    "iwae50_dreg": (
        "IWAE k=50, DReG",
        ["model.objective=iwae", "model.objective.k=50", "model.objective.estimator=dreg"],
    ),
    "vamp": ("VAE + VampPrior", ["model.prior=vamp"]),
    "iwae5_vamp": (
        "IWAE k=5 + VampPrior",
        ["model.objective=iwae", "model.objective.k=5", "model.prior=vamp"],
    ),
}
# Binarised MNIST test NLL of the same kinds of model, for scale (other data: not comparable
# number for number): IWAE paper Table 1 (one stochastic layer), VampPrior paper Table 2.
PUBLISHED = {
    "vae": "86.76 (VAE, k=1)",
    "iwae5": "85.54 (IWAE, k=5)",
    "iwae50_dreg": "84.78 (IWAE, k=50, standard gradient)",
    "vamp": "85.57 (VAE + VampPrior)",
    "iwae5_vamp": "",
}
# Differences of test NLL on the same images (row minus baseline): what each change bought.
PAIRS = [("iwae5", "vae"), ("iwae50_dreg", "vae"), ("vamp", "vae"), ("iwae5_vamp", "iwae5")]


def run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, text=True)
    if result.returncode:
        sys.exit(f"{script} {' '.join(args)} failed with exit status {result.returncode}")


def evaluate(ckpt: Path, eval_dir: Path, k: int, batches: int) -> dict:
    """`python eval.py` of a checkpoint with k importance samples on the first `batches` test
    batches, into eval_dir; its metrics.json (the per-image NLL beside it)."""
    run(
        "eval.py", f"ckpt_path={ckpt}", f"eval.iwae_k={k}", f"eval.limit_test_batches={batches}",
        f"hydra.run.dir={eval_dir}",
    )  # fmt: skip
    return json.loads((eval_dir / "metrics.json").read_text())


def nll_difference(eval_dir: Path, baseline_dir: Path) -> tuple[float, float]:
    """The mean test NLL difference (eval_dir's minus baseline_dir's), image by image on the
    same test images, and the standard error of that mean (far below the rows' own errors,
    which mostly measure how the images differ)."""
    difference = torch.load(eval_dir / PER_IMAGE_NLL) - torch.load(baseline_dir / PER_IMAGE_NLL)
    return difference.mean().item(), difference.std().item() / math.sqrt(len(difference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, default=5000, help="IWAE samples of the evaluation")
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "likelihood_table")
    parser.add_argument(
        "--eval-only", action="store_true", help="evaluate the runs already in --out again"
    )
    parser.add_argument(
        "--pseudo-inputs", type=int, default=500, help="K of the rows with the VampPrior"
    )
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, for every row")
    args = parser.parse_args()

    eval_batch = 500  # conf/data/mnist.yaml's eval_batch_size
    batches = -(-args.test_images // eval_batch)
    lines = [
        f"`python benchmarks/likelihood_table.py --epochs {args.epochs} --k {args.k} "
        f"--test-images {args.test_images}` ({batches * eval_batch} test images)",
        "",
        f"| row | test NLL, IWAE k={args.k} (± s.e.) | test −ELBO | train.py's test NLL | "
        "active units | "
        "training wall s | eval wall s | published (binarised MNIST) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.rows:
        title, overrides = ROWS[name]
        if "model.prior=vamp" in overrides:  # a key of that prior's config only
            overrides = [*overrides, f"model.prior.n_pseudo_inputs={args.pseudo_inputs}"]
        run_dir, eval_dir = args.out / name, args.out / f"{name}-eval"
        if not args.eval_only:
            run(
                "train.py", *COMMON, *overrides, f"trainer.max_epochs={args.epochs}",
                *args.overrides, f"hydra.run.dir={run_dir}",
            )  # fmt: skip
        trained = json.loads((run_dir / "metrics.json").read_text())
        evaluated = evaluate(trained["best_checkpoint"], eval_dir, args.k, batches)
        lines.append(
            f"| {title} | {evaluated['test/iwae_nll']:.2f} ± {evaluated['test/iwae_nll_sem']:.2f} "
            f"| {-evaluated['test/elbo']:.2f} | "
            f"{trained['test/iwae_nll']:.2f} (k={trained['test/iwae_k']}, "
            f"{trained['test/iwae_images']} images) | {evaluated['test/active_units']} | "
            f"{trained['wall_time_s']:.0f} | "
            f"{evaluated['wall_time_s']:.0f} | {PUBLISHED[name]} |"
        )
        print("\n".join(lines), flush=True)
    print("\n".join(paired_differences(args.out, args.rows)))


def paired_differences(out: Path, rows: list[str]) -> list[str]:
    """Each pair's test NLL difference, image by image on the same test images (nll_difference)."""
    lines = ["", "| change | NLL difference (nats) |", "|---|---|"]
    for row, baseline in PAIRS:
        if row in rows and baseline in rows:
            mean, error = nll_difference(out / f"{row}-eval", out / f"{baseline}-eval")
            lines.append(f"| {ROWS[row][0]} − {ROWS[baseline][0]} | {mean:+.2f} ± {error:.2f} |")
    return lines


if __name__ == "__main__":
    main()
