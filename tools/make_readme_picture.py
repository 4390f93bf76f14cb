"""Draw the README's picture of what a run produces: prior samples and test reconstructions of a
short real training run on Fashion-MNIST, side by side, through the project's own commands.

    python tools/make_readme_picture.py          # docs/images/samples_and_reconstructions.png
    python tools/make_readme_picture.py --epochs 5 --size 20000

It runs `python train.py data=fashion_mnist ...` into a temporary folder (the data found where
`data=fashion_mnist` finds it: Debian's dataset-fashion-mnist package, or data.root), then
`python sample.py` twice on its last checkpoint (32 prior samples; 16 test images with their
reconstructions), and joins the two grids into one PNG. The run itself is thrown away.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, read_image
from torchvision.utils import save_image

ROOT = Path(__file__).resolve().parents[1]
PICTURE = ROOT / "docs" / "images" / "samples_and_reconstructions.png"


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def joined_side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """Two RGB images (3, H, W) of any heights, top-aligned on a white background."""
    height = max(left.shape[1], right.shape[1])
    canvas = torch.ones(3, height, left.shape[2] + gap + right.shape[2])
    canvas[:, : left.shape[1], : left.shape[2]] = left
    canvas[:, : right.shape[1], left.shape[2] + gap :] = right
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=10000, help="data.size: images per split")
    parser.add_argument("--out", type=Path, default=PICTURE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        run(
            "train.py", "data=fashion_mnist", f"data.size={args.size}",
            f"trainer.max_epochs={args.epochs}", "callbacks.pictures=null", "logger=null",
            "eval.iwae_k=2", "eval.iwae_images=8", "seed=0", "torch_threads=1",
            f"hydra.run.dir={run_dir}",
        )  # fmt: skip
        checkpoint = f"ckpt_path={run_dir}/checkpoints/last.ckpt"
        run("sample.py", checkpoint, "mode=prior", "n=32", f"out={folder}")
        run("sample.py", checkpoint, "mode=reconstruct", "n=16", f"out={folder}")
        grids = [
            read_image(str(Path(folder) / name), ImageReadMode.RGB).float() / 255
            for name in ("prior.png", "reconstruct.png")
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # twice the size, pixel for pixel: 28-pixel images are hard to see at their own size
    picture = joined_side_by_side(*grids).repeat_interleave(2, 1).repeat_interleave(2, 2)
    save_image(picture, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
