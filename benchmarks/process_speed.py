"""Training speed as a user sees it: whole programs, each in its own process, alternated.

    python benchmarks/process_speed.py                      # 5 rounds, MLP and conv, 3 epochs
    python benchmarks/process_speed.py --rounds 7 --workloads conv
    python benchmarks/process_speed.py --set data.size=640 --epochs 2   # overrides for all
    python benchmarks/process_speed.py --threads 1 --limit-batches 50  # a busy machine

Three programs do the same work, each started as its own process:
(a) benchmarks/plain_vae.py, a plain PyTorch loop over an in-memory tensor;
(b) benchmarks/bare_lightning.py, the same under a bare Lightning Trainer;
(c) the project's `python train.py ...` as a user types it, with the pictures off
    (`callbacks.pictures=null`: (a) and (b) draw none) and the evaluation after training cut to
    one test batch (it comes after the timed epochs).
"The same work" is what train.py does each epoch: training on its training split, the loss on
its validation split, a checkpoint of the best model by validation loss and last.ckpt. (a) and
(b) read the project's own splits (written once to a file beforehand) and build the project's
encoder and decoder, so (c)/(b) is what the project adds to Lightning and (b)/(a) Lightning's
own share. All use PyTorch's default number of threads, as train.py does, or `--threads`
(train.py's `torch_threads`); `--limit-batches` ends each training epoch after that many batches
(train.py's `trainer.limit_train_batches`).

The workloads: `mlp`, train.py's `data=fashion_mnist model=mlp` (784-400-20, batch 128; the
full Fashion-MNIST must be where data/fashion_mnist finds it), and `conv`, train.py's default
(the conv model on shapes). Each program prints the time at the end of every epoch (train.py's
one-line-per-epoch log, its output not being a terminal); the steady-state speed is the training
images of an epoch over the median time from one epoch end to the next, so start-up and the first
epoch are not counted. Each round runs every program once per workload, in an order that
rotates from round to round, so all see the same moments of a shared machine; the ratios are
taken within each round. The table (each round's images/s and ratios, then the median and the
range of each ratio) is printed and written to `--out`/table.md.
"""

import argparse
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
WORKLOADS = {"mlp": ["data=fashion_mnist", "model=mlp"], "conv": []}
PROGRAMS = ("a", "b", "c")
# train.py's settings that keep the run to the timed epochs and the same work as (a) and (b)
PROJECT_SETTINGS = ["callbacks.pictures=null", "trainer.limit_test_batches=1"]
# train.py's epoch line: "[2026-12-04 16:50:33,798][vae_lightning.callbacks][INFO] - epoch 0/2"
PROJECT_EPOCH = re.compile(r"^\[([\d-]+ [\d:]+,\d+)\]\[vae_lightning\.callbacks\]\[INFO\] - epoch ")
PLAIN_EPOCH = re.compile(r"^epoch \d+ end ([\d.]+)$")


def write_data(workload: str, overrides: list[str], path: Path) -> tuple[list[str], int, int]:
    """The project's training and validation split and model settings for (a) and (b), as train.py
    composes them; its overrides, the number of training images and the batch size."""
    overrides = [*WORKLOADS[workload], *overrides]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train, val = datamodule.split("train"), datamodule.split("val")
    model = cfg.model
    torch.save(
        {
            "train": train.images,
            "val": val.images,
            "image_shape": tuple(datamodule.image_shape),
            "network": OmegaConf.to_container(model.network),
            "latent_dim": model.latent_dim,
            "lr": model.optimizer.lr,
            "batch_size": cfg.data.batch_size,
            "eval_batch_size": cfg.data.eval_batch_size,
        },
        path,
    )
    return overrides, len(train), cfg.data.batch_size


def command(program: str, data: Path, overrides: list[str], args, out: Path) -> list[str]:
    if program.startswith("c"):  # c, or a variant "c:NAME"
        settings = [f"trainer.max_epochs={args.epochs}", f"hydra.run.dir={out}"]
        settings += args.variants.get(program.removeprefix("c:"), [])
        if args.threads:
            settings.append(f"torch_threads={args.threads}")
        if args.limit_batches:
            settings.append(f"trainer.limit_train_batches={args.limit_batches}")
        return [sys.executable, str(ROOT / "train.py"), *overrides, *PROJECT_SETTINGS, *settings]
    script = {"a": "plain_vae.py", "b": "bare_lightning.py"}[program]
    argv = [
        sys.executable,
        str(HERE / script),
        str(data),
        f"--epochs={args.epochs}",
        f"--out={out}",
    ]
    if args.threads:
        argv.append(f"--threads={args.threads}")
    if args.limit_batches:
        argv.append(f"--limit-batches={args.limit_batches}")
    return argv


def epoch_ends(program: str, output: str) -> list[float]:
    """The times (s) at which the program's epochs ended, from its output."""
    if program.startswith("c"):
        stamps = [PROJECT_EPOCH.match(line) for line in output.splitlines()]
        return [
            datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() for m in stamps if m
        ]
    return [float(m.group(1)) for m in map(PLAIN_EPOCH.match, output.splitlines()) if m]


def run(program: str, data: Path, overrides: list[str], args, out: Path) -> float:
    """Run one program; its steady-state seconds per epoch (the median epoch-end to epoch-end)."""
    argv = command(program, data, overrides, args, out)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    ends = epoch_ends(program, done.stdout + done.stderr)
    if done.returncode or len(ends) != args.epochs:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return statistics.median(later - earlier for earlier, later in pairwise(ends))


def summary(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="of each program; at least 2")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=["mlp", "conv"])
    parser.add_argument(
        "--set", action="append", default=[], help="a train.py override for every program"
    )
    parser.add_argument("--threads", type=int, help="PyTorch's threads in every program")
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="also run train.py with these space-separated overrides in each round, e.g. "
        "'no-logger=logger=null' (an ablation: what one part of the project costs)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "process_speed")
    args = parser.parse_args()
    args.variants = {}
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        args.variants[name] = overrides.split()
    programs = (*PROGRAMS, *(f"c:{name}" for name in args.variants))
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the speed is taken between epoch ends")
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = {}
    for workload in args.workloads:
        data = args.out / f"{workload}.pt"
        prepared[workload] = (data, *write_data(workload, args.set, data))

    rows = [
        "| workload | round | order | (a) plain img/s | (b) Lightning img/s | (c) train.py img/s "
        "| c/b | b/a | c/a |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = {w: {"c/b": [], "b/a": [], "c/a": []} for w in args.workloads}
    variant_rows = [
        "| workload | round | variant | img/s | variant/b | variant/c |",
        "|---|---|---|---|---|---|",
    ]
    variant_ratios = {(w, v): [] for w in args.workloads for v in args.variants}
    for round_ in range(1, args.rounds + 1):
        shift = round_ % len(programs)
        order = programs[shift:] + programs[:shift]
        for workload in args.workloads:
            data, overrides, n_train, batch_size = prepared[workload]
            if args.limit_batches:
                n_train = min(n_train, args.limit_batches * batch_size)
            speed = {}
            for program in order:
                out = args.out / f"{workload}-{program.replace(':', '-')}-{round_}"
                speed[program] = n_train / run(program, data, overrides, args, out)
            a, b, c = (speed[p] for p in PROGRAMS)
            for name, value in (("c/b", c / b), ("b/a", b / a), ("c/a", c / a)):
                ratios[workload][name].append(value)
            shown_order = "".join(p if len(p) == 1 else f"[{p[2:]}]" for p in order)
            rows.append(
                f"| {workload} | {round_} | {shown_order} | {a:.0f} | {b:.0f} | {c:.0f} "
                f"| {c / b:.3f} | {b / a:.3f} | {c / a:.3f} |"
            )
            print(rows[-1], flush=True)
            for name in args.variants:
                v = speed[f"c:{name}"]
                variant_ratios[workload, name].append(v / b)
                variant_rows.append(
                    f"| {workload} | {round_} | {name} | {v:.0f} | {v / b:.3f} | {v / c:.3f} |"
                )
                print(variant_rows[-1], flush=True)
    for workload in args.workloads:
        r = ratios[workload]
        rows.append(
            f"| {workload} | median (range) | | | | | {summary(r['c/b'])} | {summary(r['b/a'])} "
            f"| {summary(r['c/a'])} |"
        )
    for (workload, name), values in variant_ratios.items():
        variant_rows.append(f"| {workload} | median (range) | {name} | | {summary(values)} | |")
    if args.variants:
        rows += ["", *variant_rows]
    limit = f" of {args.limit_batches} batches" if args.limit_batches else ""
    header = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} rounds of "
        f"{args.epochs} epochs{limit}; overrides {' '.join(args.set) or 'none'}; torch "
        f"{torch.__version__}, {args.threads or torch.get_num_threads()} threads"
    )
    table = "\n".join([header, "", *rows]) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
