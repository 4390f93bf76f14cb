"""Fashion-MNIST after N epochs: test -ELBO and IWAE NLL of the MLP and of the default conv model.

    PYTHONPATH=src python benchmarks/fashion_mnist_nll.py --model mlp conv --epochs 10 --iwae-k 1000

The setting of pytorch/examples' vae/main.py: all 60,000 training images, Bernoulli likelihood on
the grey values, Adam at 1e-3, batch 128, seed 1; its test -ELBO after 10 epochs is 244.4 on this
machine. Models and data are the project's own `model=mlp` / `model=conv` and
`data=fashion_mnist` configs (with no validation split, so all 60,000 images train).
"""

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LambdaCallback

from vae_lightning.data import InMemoryImages
from vae_lightning.metrics import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
PYTORCH_EXAMPLES_TEST_LOSS = 244.4


def print_epoch(trainer: L.Trainer, model: L.LightningModule) -> None:
    loss = trainer.callback_metrics["train/loss"].item()
    print(f"  epoch {trainer.current_epoch} train/loss {loss:.2f}", flush=True)


def run(model_name: str, epochs: int, iwae_k: int, iwae_images: int | None) -> dict[str, float]:
    L.seed_everything(1, workers=True)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={model_name}",
                "data=fashion_mnist",
                "data.val_fraction=0",
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={ROOT / 'benchmarks' / 'outputs'}",
            ],
        )
    datamodule = instantiate(cfg.data)
    model = instantiate(
        cfg.model, image_shape=datamodule.image_shape, _recursive_=False, _convert_="all"
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LambdaCallback(on_train_epoch_end=print_epoch)],
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    train_s = time.perf_counter() - started
    # Kept for a later `eval.py ckpt_path=... data=<a Fashion-MNIST config>` (larger k, say).
    trainer.save_checkpoint(ROOT / "benchmarks" / "outputs" / f"fashion_mnist_{model_name}.ckpt")
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]

    if iwae_images:  # IWAE on the first n test images only, where all 10k would take too long
        test_split = datamodule.splits["test"]
        datamodule.splits["test"] = InMemoryImages(
            test_split.images[:iwae_images], test_split.labels[:iwae_images]
        )
    # CPU time summed over the threads, next to the wall time: the machine is shared, and the
    # CPU time is what a 2-core machine of our own would need, at best halved by its 2 threads.
    started, started_cpu = time.perf_counter(), time.process_time()
    metrics = evaluate_model(model, datamodule, iwae_k)
    iwae_s, iwae_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    return {
        "model": model_name,
        "params": sum(p.numel() for p in model.parameters()),
        "train_s": round(train_s),
        "test_-elbo": round(-test["test/elbo"], 2),
        "iwae_k": iwae_k,
        "iwae_images": iwae_images or len(datamodule.splits["test"]),
        "iwae_nll": round(metrics["test/iwae_nll"], 2),
        "iwae_wall_s": round(iwae_s, 1),
        "iwae_cpu_s": round(iwae_cpu_s, 1),
        "active_units": metrics["test/active_units"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--iwae-images", type=int, default=None, help="default: all 10,000")
    args = parser.parse_args()
    print(
        f"torch threads: {torch.get_num_threads()}; pytorch/examples test -ELBO after 10 "
        f"epochs: {PYTORCH_EXAMPLES_TEST_LOSS}"
    )
    for name in args.model:
        result = run(name, args.epochs, args.iwae_k, args.iwae_images)
        print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)


if __name__ == "__main__":
    main()
