"""Train a feature network of the sample-quality metrics and write it as package data, with its
test accuracy.

    python tools/make_feature_network.py                  # Fashion-MNIST: seed 0, 8 epochs
    python tools/make_feature_network.py --root DIR       # its IDX files elsewhere
    python tools/make_feature_network.py --data shapes    # the shapes' factors: 20 epochs

`--data fashion_mnist` reads the real splits where `data=fashion_mnist` finds them (Debian's
dataset-fashion-mnist package: /usr/share/datasets/fashion-mnist) and trains
vae_lightning.features.FashionMNISTClassifier on the 60,000 training images, tested on the 10,000
test images. `--data shapes` renders `--shapes-images` points of the shapes data's factor grid
(vae_lightning.data.shapes, 32x32, drawn without repeats from the seed), trains
ShapesFactorClassifier to tell every factor (the sum of the five heads' cross-entropies) on all
but the last 10,000 and tests it on those. Both: Adam at 1e-3, batches of 128, no augmentation.
It writes, in src/vae_lightning/features/:

- <data>.safetensors: the weights (safetensors: loading them runs no code);
- <data>.json: the test accuracy of the class (Fashion-MNIST's label; the shapes' shape), each
  factor's for the shapes, the seed, the command, and the weights' SHA-256, which the package
  checks on every load.

Deterministic by seed: the CPU only, a fixed number of threads, torch's deterministic algorithms,
and the shuffling drawn from a generator of the seed. The same seed, threads and torch version
write the same bytes (two runs here wrote the same SHA-256). One thread by default: on a shared
2-core machine two threads ran several times slower than one. Fashion-MNIST: about 2 minutes on a
quiet core, 16 minutes of wall time on 2 cores shared with four other busy processes. The shapes:
25 minutes of wall time (nice 5) beside two single-thread training runs on 2 cores.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vae_lightning.data.in_memory import InMemoryImages, to_unit_float
from vae_lightning.data.shapes import FACTOR_NAMES, render, sample_factor_indices
from vae_lightning.data.sources import SYSTEM_DIRS, read_idx_split
from vae_lightning.features import SHIPPED, sha256_of

BATCH_SIZE = 128
LEARNING_RATE = 1e-3
SHAPES_TEST_IMAGES = 10_000


def logits_of(classifier: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each head's logits of uint8 images: one head for a class, one a factor for the shapes."""
    logits = classifier(to_unit_float(images))
    return logits if isinstance(logits, tuple) else (logits,)


def label_columns(labels: torch.Tensor) -> torch.Tensor:
    """Labels (N,) or (N, heads) as (N, heads), a column a head."""
    return labels.view(len(labels), -1)


def accuracies(classifier: nn.Module, split: InMemoryImages) -> list[float]:
    """Each head's fraction of the split's images given their label."""
    right = []
    with torch.no_grad():
        for index in torch.arange(len(split)).split(1000):
            images, labels = split[index]
            heads = logits_of(classifier, images)
            predicted = torch.stack([logits.argmax(1) for logits in heads], dim=1)
            right.append(predicted == label_columns(labels))
    return torch.cat(right).double().mean(0).tolist()


def splits(args) -> tuple[InMemoryImages, InMemoryImages, str]:
    """The training and test splits, and where they came from."""
    if args.data == "fashion_mnist":
        train = read_idx_split(args.root, "train", size=28, channels=1)
        test = read_idx_split(args.root, "test", size=28, channels=1)
        return train, test, f"Fashion-MNIST, {len(train)} training images from {args.root}"
    factors = sample_factor_indices(args.shapes_images, args.seed)
    everything = InMemoryImages(render(factors, SHIPPED["shapes"].image_shape[-1]), factors)
    cut = len(everything) - SHAPES_TEST_IMAGES
    train = everything.subset(torch.arange(cut))
    test = everything.subset(torch.arange(cut, len(everything)))
    return (
        train,
        test,
        f"shapes, {cut} training images of the factor grid drawn with seed {args.seed}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=list(SHIPPED), default="fashion_mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="8 (fashion_mnist), 20 (shapes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=SYSTEM_DIRS["fashion_mnist"][0])
    parser.add_argument("--shapes-images", type=int, default=50_000, help="with --data shapes")
    args = parser.parse_args()
    args.epochs = args.epochs or {"fashion_mnist": 8, "shapes": 20}[args.data]

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    shipped = SHIPPED[args.data]
    train, test, source = splits(args)
    classifier = shipped.network()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
    shuffling = torch.Generator().manual_seed(args.seed)

    started = time.perf_counter()
    for epoch in range(args.epochs):
        classifier.train()
        for index in torch.randperm(len(train), generator=shuffling).split(BATCH_SIZE):
            images, labels = train[index]
            heads = zip(logits_of(classifier, images), label_columns(labels).T, strict=True)
            loss = sum(F.cross_entropy(logits, column) for logits, column in heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        classifier.eval()
        test_accuracies = accuracies(classifier, test)
        shown = ", ".join(f"{a:.4f}" for a in test_accuracies)
        print(f"epoch {epoch + 1}: test accuracy {shown}", flush=True)
    trained_s = time.perf_counter() - started

    save_file(classifier.state_dict(), shipped.weights)
    record = {
        "network": f"vae_lightning.features.{shipped.network.__name__}",
        "data": source,
        "test_accuracy": round(test_accuracies[0], 4),
        "test_images": len(test),
    }
    if args.data == "shapes":
        record["test_accuracy_of"] = "the shape; each factor's below"
        # the test images are the last SHAPES_TEST_IMAGES of sample_factor_indices(this, seed)
        record["grid_points_drawn"] = args.shapes_images
        record["factor_test_accuracies"] = {
            name: round(accuracy, 4)
            for name, accuracy in zip(FACTOR_NAMES, test_accuracies, strict=True)
        }
    record |= {
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "torch": torch.__version__,
        "command": shlex.join(["python", "tools/make_feature_network.py", *sys.argv[1:]]),
        "trained_in_s": round(trained_s),
        "sha256": sha256_of(shipped.weights),
    }
    shipped.record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
