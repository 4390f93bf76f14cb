"""The model family in one table: every model of the project trained for the same wall time on
dynamically binarised Fashion-MNIST, with its likelihood and the quality of its samples.

    python benchmarks/zoo.py                                # every row, seed 0, two at a time
    python benchmarks/zoo.py --rows vae iaf --seeds 0 1 2   # rows whose comparison is close
    python benchmarks/zoo.py --minutes 1 --k 100 --samples 1000   # a quick look

Each row is `python train.py` as a user types it (the command is printed with the row): the
project's default conv VAE (`model=conv`, each part's config as it ships) changed only where the
row's model differs, stopped by Lightning's `trainer.max_time` after `--minutes` of training
(the VQ-VAE's two stages get half each) with one CPU thread per run (`torch_threads=1`) and
`--jobs` runs at a time, so that rows see the same contention on a shared machine. train.py's own
evaluation then gives every number: the IWAE bound with k = `--k` on the first `--test-images`
test images, the test -ELBO and reconstruction term, the active units, and FID, KID and
precision/recall (in the package's Fashion-MNIST classifier's features, NOT Inception's) of
`--samples` prior samples and as many samples of a Gaussian mixture fitted on the training
images' posterior means. Nothing is tuned per row: the comparison is of each model as it ships.

A row with several seeds shows mean ± standard deviation over them. The published orderings are
printed after the table as they come out, each difference taken seed by seed (the NLLs image by
image on the same test images). Runs go to <out>/<row>/seed<seed>/; a run whose metrics.json is
there already is not trained again, so the same command prints the table of finished runs.
"""

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from likelihood_table import nll_difference

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "data=fashion_mnist",
    "data.binarize=dynamic",
    "callbacks.pictures=null",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=-1",
    "torch_threads=1",
]
# 2 epochs (844 steps), a quarter of the VAE's 5 minutes: the VampPrior paper warmed up too.
WARMUP = ["model.kl_warmup=2", "model.kl_warmup_unit=epochs"]
FIRST_STAGE = "{previous}/checkpoints/last.ckpt"  # the VQ-VAE prior's stage: the first's weights
# row -> (title, the train.py overrides of each stage); a row of two stages is the VQ-VAE's
ROWS = {
    "vae": ("VAE", [[]]),
    "beta_vae": ("β-VAE, β=4", [["model.beta=4"]]),
    "iwae": ("IWAE, k=5", [["model.objective=iwae", "model.objective.k=5"]]),
    "iwae_dreg": (
        "IWAE, k=5, DReG",
        [["model.objective=iwae", "model.objective.k=5", "model.objective.estimator=dreg"]],
    ),
    "vae_warmup": ("VAE, KL warm-up", [WARMUP]),
    "vamp": ("VampPrior, KL warm-up", [["model.prior=vamp", *WARMUP]]),
    "hierarchical": ("hierarchical VAE, 3 layers", [["model=hierarchical"]]),
    "iaf": ("IAF posterior", [["model.posterior=iaf"]]),
    "wae": ("WAE-MMD", [["model.objective=mmd"]]),
    "cvae": ("CVAE (given the class)¹", [["model.condition=label"]]),
    "m2": ("M2, 1,000 labels²", [["model=m2", "data.labelled=1000"]]),
    "vqvae": (
        "VQ-VAE + PixelCNN prior³",
        [["model=vqvae"], ["model=vqvae_prior", f"model.first_stage={FIRST_STAGE}"]],
    ),
    "dlogistic": (
        "discretised logistic, 8-bit⁴",
        [["data.binarize=null", "model.likelihood=discretized_logistic"]],
    ),
}
FOOTNOTES = [
    "¹ given each test image's class: its bound is of log p(x | y), not comparable with "
    "log p(x); its samples are of each class in turn; no mixture sampler for a decoder that "
    "takes the class.",
    "² 1,000 of the training labels (100 a class), the rest unlabelled; given the class as ¹.",
    "³ the bound is −log p(x | z_q) − log p(z_q) of the deterministic code map; no mixture "
    "sampler for discrete codes; steps and seconds are the prior's stage, the first stage "
    "trained for the other half of the time.",
    "⁴ the 8-bit grey images, not binarised: its NLL is of 256 levels a pixel, not comparable "
    "with the binary rows'; its samples are.",
]
# (claim, metric, row expected lower, row expected higher); the mixture sampler against the
# prior is GMM_ORDERING, within each row
ORDERINGS = [
    ("IWAE below VAE (test NLL)", "test/iwae_nll", "iwae", "vae"),
    ("IWAE with DReG below VAE (test NLL)", "test/iwae_nll", "iwae_dreg", "vae"),
    ("VampPrior below the standard prior, both warmed up", "test/iwae_nll", "vamp", "vae_warmup"),
    ("hierarchy below the conv VAE (test NLL)", "test/iwae_nll", "hierarchical", "vae"),
    ("IAF below the diagonal posterior (test NLL)", "test/iwae_nll", "iaf", "vae"),
    ("WAE's FID below the VAE's (prior samples)", "test/fid_fmnist_features", "wae", "vae"),
]
GMM_ORDERING = "mixture samples' FID below the prior's, in each row that has both"
METRICS = {  # column -> (key of metrics.json, format)
    "test NLL": ("test/iwae_nll", ".2f"),
    "−ELBO": ("test/loss_elbo", ".2f"),
    "recon": ("test/recon", ".2f"),
    "FID prior": ("test/fid_fmnist_features", ".1f"),
    "FID GMM": ("test/fid_fmnist_features_gmm", ".1f"),
    "KID prior": ("test/kid_fmnist_features", ".2f"),
    "KID GMM": ("test/kid_fmnist_features_gmm", ".2f"),
    "P / R prior": (("test/precision_fmnist_features", "test/recall_fmnist_features"), ".2f"),
    "P / R GMM": (("test/precision_fmnist_features_gmm", "test/recall_fmnist_features_gmm"), ".2f"),
    "active units": ("test/active_units", ".0f"),
    "steps": ("steps", ".0f"),
    "train s": ("epochs_s", ".0f"),
    "wall s": ("wall_time_s", ".0f"),  # the whole command: training and evaluation
}


def stage_commands(row: str, seed: int, args) -> list[list[str]]:
    """The train.py commands of a row's stages, each into its own run directory."""
    stages = ROWS[row][1]
    seconds = round(args.minutes * 60 / len(stages))
    max_time = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    commands, previous = [], None
    for index, overrides in enumerate(stages):
        run_dir = run_dir_of(args.out, row, seed, index, len(stages))
        commands.append(
            [
                "train.py", *COMMON, *(o.format(previous=previous) for o in overrides),
                f"seed={seed}", f"trainer.max_time={max_time}", f"eval.iwae_k={args.k}",
                f"eval.iwae_images={args.test_images}", f"eval.samples.n={args.samples}",
                *args.overrides, f"hydra.run.dir={run_dir}",
            ]
        )  # fmt: skip
        previous = run_dir
    return commands


def run_dir_of(out: Path, row: str, seed: int, stage: int = -1, stages: int = 1) -> Path:
    """Where a stage runs; the last stage's directory holds the row's metrics.json."""
    seed_dir = out / row / f"seed{seed}"
    return seed_dir if stage in (-1, stages - 1) else seed_dir / f"stage{stage + 1}"


def say(line: str) -> None:
    """A whole line at once: the rows' threads print between each other's lines, not in them."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_row(row: str, seed: int, args) -> str | None:
    """Train a row's stages unless its metrics are there; the reason it failed, else None."""
    if (run_dir_of(args.out, row, seed) / "metrics.json").is_file():
        return None
    for command in stage_commands(row, seed, args):
        log = Path(command[-1].removeprefix("hydra.run.dir=")) / "zoo.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"[{row} seed {seed}] python {' '.join(command)}")
        with log.open("w") as output:
            done = subprocess.run(
                [sys.executable, *command], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
            )
        if done.returncode:
            return f"{row} seed {seed}: exit status {done.returncode}, see {log}"
    say(f"[{row} seed {seed}] done")
    return None


def metrics_of(out: Path, row: str) -> dict[int, dict]:
    """The metrics.json of each finished seed of a row, by seed, with the −ELBO and the
    training time as the table wants them."""
    found = {}
    for path in sorted((out / row).glob("seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        metrics["test/loss_elbo"] = -metrics["test/elbo"]
        metrics["epochs_s"] = metrics["phases_s"]["epochs"]
        found[int(path.parent.name.removeprefix("seed"))] = metrics
    return found


def summary(values: list[float], fmt: str) -> str:
    """One value, or the mean ± standard deviation of several."""
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], fmt)
    spread = fmt.lstrip("+")  # a standard deviation has no sign to show
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{spread}}"


def cell(runs: dict[int, dict], key, fmt: str) -> str:
    if isinstance(key, tuple):
        return " / ".join(cell(runs, part, fmt) for part in key)
    return summary([metrics[key] for metrics in runs.values() if key in metrics], fmt)


def table(out: Path, rows: list[str]) -> list[str]:
    lines = [
        f"| model | seeds | {' | '.join(METRICS)} |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for row in rows:
        runs = metrics_of(out, row)
        if runs:
            cells = [cell(runs, key, fmt) for key, fmt in METRICS.values()]
            seeds = ", ".join(map(str, runs))
            lines.append(f"| {ROWS[row][0]} | {seeds} | {' | '.join(cells)} |")
    return lines


def differences(out: Path, metric: str, lower: str, higher: str):
    """The seeds both rows have and, seed by seed, lower's metric minus higher's, with the NLL's
    standard error over the test images (the NLL image by image: nll_difference)."""
    lows, highs = metrics_of(out, lower), metrics_of(out, higher)
    seeds = sorted(set(lows) & set(highs))
    if metric != "test/iwae_nll":
        return seeds, [lows[seed][metric] - highs[seed][metric] for seed in seeds], []
    paired = [
        nll_difference(out / lower / f"seed{seed}", out / higher / f"seed{seed}") for seed in seeds
    ]
    return seeds, [mean for mean, _ in paired], [error for _, error in paired]


def verdict(differences: list[float]) -> str:
    if not differences:
        return "not run"
    if all(d < 0 for d in differences):
        return "holds" + (" in every seed" if len(differences) > 1 else " (one seed)")
    if all(d > 0 for d in differences):
        return "reversed" + (" in every seed" if len(differences) > 1 else " (one seed)")
    return "mixed over the seeds"


def orderings(out: Path, rows: list[str]) -> list[str]:
    lines = [
        "| published ordering | difference (expected < 0) | s.e. over the test images (a seed's, "
        "the largest) | seeds | here |",
        "|---|---|---|---|---|",
    ]
    for claim, metric, lower, higher in ORDERINGS:
        if lower in rows and higher in rows:
            seeds, values, errors = differences(out, metric, lower, higher)
            fmt = "+.2f" if metric == "test/iwae_nll" else "+.1f"
            error = f"{max(errors):.2f}" if errors else "—"
            lines.append(
                f"| {claim} | {summary(values, fmt)} | {error} | "
                f"{', '.join(map(str, seeds))} | {verdict(values)} |"
            )
    gmm = [
        metrics["test/fid_fmnist_features_gmm"] - metrics["test/fid_fmnist_features"]
        for row in rows
        for metrics in metrics_of(out, row).values()
        if "test/fid_fmnist_features_gmm" in metrics
    ]
    lower = sum(d < 0 for d in gmm)
    lines.append(
        f"| {GMM_ORDERING} | {summary(gmm, '+.1f')} | — | all | lower in {lower} of {len(gmm)} "
        "runs |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="trainer.max_time of a row")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--k", type=int, default=1000, help="IWAE samples of the test NLL")
    parser.add_argument("--test-images", type=int, default=500, help="images of the test NLL")
    parser.add_argument("--samples", type=int, default=10_000, help="of each sampler")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "zoo")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, for every row")
    args = parser.parse_args()

    runs = [(row, seed) for seed in args.seeds for row in args.rows]
    with ThreadPoolExecutor(args.jobs) as pool:
        failures = [f for f in pool.map(lambda run: train_row(*run, args), runs) if f]
    print(
        f"\n{args.minutes:g} minutes of training a row (trainer.max_time), one thread, "
        f"{args.jobs} at a time; test NLL: IWAE k={args.k} on the first {args.test_images} test "
        f"images; {args.samples} samples of each sampler; features of the shipped Fashion-MNIST "
        "classifier (not Inception's)\n"
    )
    print("\n".join([*table(args.out, args.rows), "", *FOOTNOTES, ""]))
    print("\n".join(orderings(args.out, args.rows)))
    if failures:
        sys.exit("\n".join(["failed:", *failures]))


if __name__ == "__main__":
    main()
