"""Semi-supervised Fashion-MNIST with few labels: the test accuracy of M2's classifier q(y|x)
(Kingma et al. 2014) against the same classifier trained on the labelled images alone. One
command per row:

    PYTHONPATH=src python benchmarks/m2_labels.py --labels 100 -- seed=0 model.network=mlp \
        model.network.hidden_dims=[500] model.latent_dim=50 +trainer.max_steps=300 \
        callbacks.pictures=null eval.iwae_k=2 eval.iwae_images=100 eval.conditional_samples=10
    PYTHONPATH=src python benchmarks/m2_labels.py --labels 100 --classifier-only --steps 500 \
        -- seed=0

M2 is `python train.py data=fashion_mnist model=m2 data.labelled=N` (and any further overrides
given after --, as train.py reads them), through the project's own train(); its row reads
test/accuracy and the steps taken from the metrics it returns. The classifier alone is
objectives.m2.build_classifier with the objective's default hidden layers, trained with the
model's default optimiser (Adam, lr 1e-3) on the same N labelled images (the datamodule's
balanced subset for data.labelled=N, drawn with data.seed as M2's), the whole set as one batch,
for --steps steps, its weights drawn with the run's seed. Both are tested on the 10,000 test
images.
"""

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.cli import train
from vae_lightning.config import group_choices_by_dotted_key
from vae_lightning.data.classes import UNLABELLED
from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.objectives.m2 import build_classifier

ROOT = Path(__file__).resolve().parents[1]


def config(labels: int, overrides: list[str]):
    output_dir = ROOT / "benchmarks" / "outputs" / f"m2_labels_{labels}"
    command_line = [
        "data=fashion_mnist",
        "model=m2",
        f"data.labelled={labels}",
        f"paths.root_dir={ROOT}",
        f"paths.output_dir={output_dir}",
        *overrides,
    ]
    # as train.py reads its command line: model.network=mlp chooses that part's config
    overrides = group_choices_by_dotted_key(ROOT / "conf", command_line)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def m2_row(labels: int, epochs: int, overrides: list[str]) -> dict:
    metrics = train(config(labels, [f"trainer.max_epochs={epochs}", *overrides]))
    return {
        "method": "M2",
        "labels": labels,
        "epochs": epochs,
        "steps": metrics["steps"],
        "test_accuracy": metrics["test/accuracy"],
        "train_s": metrics["wall_time_s"],
    }


def classifier_row(labels: int, steps: int, overrides: list[str]) -> dict:
    cfg = config(labels, overrides)
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_split, test_split = datamodule.split("train"), datamodule.split("test")
    known = train_split.labels != UNLABELLED
    images = to_unit_float(train_split.images[known])
    targets = train_split.labels[known]
    hidden_dims = cfg.model.objective.classifier_hidden_dims
    classifier = build_classifier(datamodule.image_shape, len(datamodule.class_names), hidden_dims)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(classifier(datamodule.model_input(images, True)), targets).backward()
        optimizer.step()
    train_s = time.perf_counter() - started
    classifier.eval()
    with torch.no_grad():
        test_images = datamodule.model_input(to_unit_float(test_split.images), False)
        predicted = classifier(test_images).argmax(dim=1)
    return {
        "method": "classifier only",
        "labels": labels,
        "steps": steps,
        "test_accuracy": (predicted == test_split.labels).float().mean().item(),
        "train_s": round(train_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=100, help="data.labelled")
    parser.add_argument("--epochs", type=int, default=1, help="M2's training epochs")
    parser.add_argument("--classifier-only", action="store_true", help="the classifier alone")
    parser.add_argument("--steps", type=int, default=500, help="the classifier's full-batch steps")
    parser.add_argument("overrides", nargs="*", help="further train.py overrides, after --")
    args = parser.parse_args()
    if args.classifier_only:
        row = classifier_row(args.labels, args.steps, args.overrides)
    else:
        row = m2_row(args.labels, args.epochs, args.overrides)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
