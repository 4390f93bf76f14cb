"""The hierarchical VAE on CIFAR-10 on one GPU in bfloat16: the command a GPU user runs.

    python benchmarks/hierarchical_cifar10.py                    # CIFAR-10 under data.root
    python benchmarks/hierarchical_cifar10.py trainer.max_epochs=5 data.root=/data

It is `python train.py` with the settings below (any train.py override after them wins), its
output passed through, then the seconds of each training epoch, read from the run's log
(callbacks.EpochLog's lines), and their median. CIFAR-10 is not downloaded: torchvision's
files must be in <data.root>/cifar-10-batches-py. The likelihood is a Gaussian with a learned
sigma per channel (a continuous density on values in [0, 1]: add 8 to its bits/dim to compare
with the literature's, see metrics.bits_per_dim).
"""

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = [
    "data=cifar10",
    "trainer=gpu",
    "trainer.precision=bf16-mixed",
    "trainer.max_epochs=100",
    "data.batch_size=128",
    "model=hierarchical",
    "model.network.n_layers=4",
    "model.network.latent_dims=[16,16,16,32]",
    "model.latent_dim=32",
    "model.network.hidden_dims=[64,128]",
    "model.likelihood=gaussian_learned",
    "model.likelihood.per=channel",
    "model.kl_warmup=5",
    "model.kl_warmup_unit=epochs",
    "callbacks.pictures.image_grids.temperature=0.8",
]
EPOCH_LINE = re.compile(r"epoch (\d+)/\S+ .*\(([\d.]+) s\)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "hierarchical_cifar10")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides")
    args = parser.parse_args()
    command = ["train.py", *GPU, *args.overrides, f"hydra.run.dir={args.out}"]
    # Through a pipe, not a terminal: train.py then logs one line per epoch with its seconds.
    with subprocess.Popen(
        [sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as train:
        for line in train.stdout:
            print(line, end="", flush=True)
    if train.returncode:
        sys.exit(f"train.py failed: python {' '.join(command)}")
    seconds = [
        float(match[2])
        for line in (args.out / "train.log").read_text().splitlines()
        if (match := EPOCH_LINE.search(line))
    ]
    print(f"seconds per training epoch: {', '.join(f'{s:.1f}' for s in seconds)}")
    print(f"median: {statistics.median(seconds):.1f} s")


if __name__ == "__main__":
    main()
