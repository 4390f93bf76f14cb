"""The hierarchical VAE against the one-layer conv VAE at the same wall-time budget, on
dynamically binarised Fashion-MNIST, with the test NLL by IWAE and its curve over training time.

    python benchmarks/hierarchical_budget.py                      # 9 minutes each, both at once
    python benchmarks/hierarchical_budget.py --minutes 2 --k 100 --test-images 200

Both models train AT THE SAME TIME, one CPU thread each (`torch_threads=1`), so both see the
same contention on a shared machine, each stopped by Lightning's `trainer.max_time`. A
ModelCheckpoint with `train_time_interval` keeps the weights every `--every` seconds of
training; each of those and the final weights are evaluated with a smaller k (`--curve-k`) on
the first `--curve-images` test images for the curve of test NLL against training time
(docs/benchmarks/figures/hierarchical_budget_nll.png; the time of a checkpoint is its file's
age since the run's start), and the final weights with `--k` on the first `--test-images` test
images, by likelihood_table.py's evaluation and its image-by-image difference. Runs go to
outputs/hierarchical_budget/<row>/.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import zoo
from likelihood_table import evaluate, nll_difference
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
# the zoo's protocol (binarised Fashion-MNIST, no epoch limit, one thread), at seed 0
COMMON = [*zoo.COMMON, "seed=0"]
# Each model's own config file as it ships; nothing tuned for this comparison.
ROWS = {
    "conv": ("one-layer conv VAE (model=conv)", ["model=conv"]),
    "hierarchical": ("hierarchical VAE, 3 layers (model=hierarchical)", ["model=hierarchical"]),
}


def train_command(row: str, out: Path, minutes: float, every: int, overrides: list[str]):
    seconds = round(minutes * 60)
    checkpoints = out / row / "checkpoints"  # beside the run's config, which eval.py reads
    timed = (
        "+callbacks.timed_checkpoint={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
        f"dirpath:{checkpoints},filename:'timed_{{step:06d}}',save_top_k:-1,"
        "auto_insert_metric_name:false,enable_version_counter:false,"
        f"train_time_interval:{{_target_:datetime.timedelta,seconds:{every}}}}}"
    )
    return [
        sys.executable, "train.py", *COMMON, *ROWS[row][1],
        f"trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
        "trainer.limit_test_batches=1", "eval.iwae_k=10", timed, *overrides,
        f"hydra.run.dir={out / row}",
    ]  # fmt: skip


def curve(out: Path, row: str, k: int, batches: int) -> list[tuple[float, float]]:
    """(minutes of training, test NLL) at each timed checkpoint and at the end."""
    run_dir = out / row
    started = (run_dir / ".hydra" / "config.yaml").stat().st_mtime
    checkpoints = sorted((run_dir / "checkpoints").glob("timed_*.ckpt"))
    checkpoints.append(run_dir / "checkpoints" / "last.ckpt")
    points = []
    for ckpt in checkpoints:
        evaluated = evaluate(ckpt, out / "curve" / f"{row}-{ckpt.stem}", k, batches)
        points.append(((ckpt.stat().st_mtime - started) / 60, evaluated["test/iwae_nll"]))
    return points


def plot(points: dict[str, list[tuple[float, float]]], k: int, images: int, path: Path) -> None:
    figure = Figure(figsize=(5.5, 3.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for row, xy in points.items():
        axes.plot(*zip(*xy, strict=True), marker="o", label=ROWS[row][0])
    axes.set(
        xlabel="training wall time (minutes, 1 thread each, run side by side)",
        ylabel=f"test NLL (nats), IWAE k={k}",
        title=f"Binarised Fashion-MNIST, first {images} test images",
    )
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=9.0, help="trainer.max_time of each")
    parser.add_argument("--every", type=int, default=120, help="seconds between checkpoints")
    parser.add_argument("--k", type=int, default=5000, help="IWAE samples of the final NLL")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--curve-k", type=int, default=100)
    parser.add_argument("--curve-images", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "hierarchical_budget")
    parser.add_argument("--figure", type=Path, default=None, help="default: <out>/nll_curve.png")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the runs in --out")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, for both")
    args = parser.parse_args()

    if not args.eval_only:
        jobs = [
            subprocess.Popen(train_command(row, args.out, args.minutes, args.every, args.overrides))
            for row in ROWS
        ]
        if any(job.wait() for job in jobs):
            sys.exit("a training run failed")
    eval_batch = 500  # conf/data/mnist.yaml's eval_batch_size: the evaluations count batches
    points = {row: curve(args.out, row, args.curve_k, -(-args.curve_images // eval_batch))
              for row in ROWS}  # fmt: skip
    plot(points, args.curve_k, args.curve_images, args.figure or args.out / "nll_curve.png")
    batches = -(-args.test_images // eval_batch)
    lines = [
        f"| model | test NLL, IWAE k={args.k} (± s.e.) | test −ELBO | steps | active units "
        f"per layer | KL per layer | NLL k={args.curve_k} over time (min: nats) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, (title, _) in ROWS.items():
        trained = json.loads((args.out / row / "metrics.json").read_text())
        final = evaluate(
            args.out / row / "checkpoints" / "last.ckpt", args.out / f"{row}-eval", args.k, batches
        )
        over_time = ", ".join(f"{t:.1f}: {nll:.1f}" for t, nll in points[row])
        lines.append(
            f"| {title} | {final['test/iwae_nll']:.2f} ± {final['test/iwae_nll_sem']:.2f} | "
            f"{-final['test/elbo']:.2f} | {trained['steps']} | "
            f"{final.get('test/active_units_per_layer', final['test/active_units'])} | "
            f"{final.get('test/kl_per_layer', round(final['test/kl'], 2))} | {over_time} |"
        )
        print("\n".join(lines), flush=True)
    mean, error = nll_difference(args.out / "hierarchical-eval", args.out / "conv-eval")
    print(f"\nNLL hierarchical − conv, image by image: {mean:+.2f} ± {error:.2f} nats")


if __name__ == "__main__":
    main()
