"""Train the Fashion-MNIST feature network of the sample-quality metrics and write it as package
data, with its test accuracy.

    python tools/make_feature_network.py                 # seed 0, 8 epochs, 1 thread
    python tools/make_feature_network.py --root DIR      # the IDX files elsewhere

It reads the real splits where `data=fashion_mnist` finds them (Debian's dataset-fashion-mnist
package: /usr/share/datasets/fashion-mnist), trains vae_lightning.features.FashionMNISTClassifier
on the 60,000 training images (Adam at 1e-3, batches of 128, cross-entropy, no augmentation),
measures its accuracy on the 10,000 test images and writes, in src/vae_lightning/features/:

- fashion_mnist.safetensors: the weights (safetensors: loading them runs no code);
- fashion_mnist.json: the test accuracy, the seed, the command, and the weights' SHA-256, which
  the package checks on every load.

Deterministic by seed: the CPU only, a fixed number of threads, torch's deterministic algorithms,
and the shuffling drawn from a generator of the seed. The same seed, threads and torch version
write the same bytes (two runs here wrote the same SHA-256). One thread by default: on a shared
2-core machine two threads ran several times slower than one. About 2 minutes on a quiet core;
16 minutes of wall time on 2 cores shared with four other busy processes.
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

from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.data.sources import SYSTEM_DIRS, read_idx_split
from vae_lightning.features import (
    FASHION_MNIST_RECORD,
    FASHION_MNIST_WEIGHTS,
    FashionMNISTClassifier,
    sha256_of,
)

BATCH_SIZE = 128
LEARNING_RATE = 1e-3


def accuracy(classifier: FashionMNISTClassifier, images: torch.Tensor, labels: torch.Tensor):
    """The fraction of uint8 images classified as their labels."""
    with torch.no_grad():
        predicted = torch.cat(
            [classifier(to_unit_float(batch)).argmax(1) for batch in images.split(1000)]
        )
    return (predicted == labels).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=SYSTEM_DIRS["fashion_mnist"][0])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    train = read_idx_split(args.root, "train", size=28, channels=1)
    test = read_idx_split(args.root, "test", size=28, channels=1)
    classifier = FashionMNISTClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
    shuffling = torch.Generator().manual_seed(args.seed)

    started = time.perf_counter()
    for epoch in range(args.epochs):
        classifier.train()
        for index in torch.randperm(len(train), generator=shuffling).split(BATCH_SIZE):
            images, labels = train[index]
            loss = F.cross_entropy(classifier(to_unit_float(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        classifier.eval()
        test_accuracy = accuracy(classifier, test.images, test.labels)
        print(f"epoch {epoch + 1}: test accuracy {test_accuracy:.4f}", flush=True)
    trained_s = time.perf_counter() - started

    save_file(classifier.state_dict(), FASHION_MNIST_WEIGHTS)
    record = {
        "network": "vae_lightning.features.FashionMNISTClassifier",
        "data": f"Fashion-MNIST, {len(train)} training images from {args.root}",
        "test_accuracy": round(test_accuracy, 4),
        "test_images": len(test),
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "torch": torch.__version__,
        "command": shlex.join(["python", "tools/make_feature_network.py", *sys.argv[1:]]),
        "trained_in_s": round(trained_s),
        "sha256": sha256_of(FASHION_MNIST_WEIGHTS),
    }
    FASHION_MNIST_RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
