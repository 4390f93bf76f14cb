"""Program (b) of process_speed.py: the same work as plain_vae.py under a bare Lightning Trainer.

    python benchmarks/bare_lightning.py DATA.pt --epochs 3 --out DIR [--threads N]

The same model, loss, optimiser and in-memory tensors as plain_vae.py, with Lightning's
automatic optimisation: a LightningModule whose training_step returns the loss and whose
validation_step logs the validation loss (epoch mean), and a Trainer with no logger, no
progress bar, no model summary and no callback but Lightning's ModelCheckpoint (the best by
validation loss, and last.ckpt), as train.py saves them. Batches come from a DataLoader over
index batches (a tensor of indices per step, sliced from the float tensor: no per-image work).
It prints one line per epoch, `epoch N end T`, T being time.time() when the epoch has ended.
"""

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from plain_vae import arguments, build, load, loss_function
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler


class Images(torch.utils.data.Dataset):
    """A float tensor of images, indexed by a whole batch of indices at once."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return self.images[indices]


def loader(images: torch.Tensor, batch_size: int, shuffle: bool) -> DataLoader:
    sampler = (RandomSampler if shuffle else SequentialSampler)(images)
    # batch_size=None: each list of indices from the BatchSampler is one __getitem__ call
    return DataLoader(
        Images(images), batch_size=None, sampler=BatchSampler(sampler, batch_size, False)
    )


class BareVAE(L.LightningModule):
    def __init__(self, data: dict):
        super().__init__()
        self.model = build(data)
        self.lr = data["lr"]

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return loss_function(self.model, x)

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", loss_function(self.model, x), batch_size=len(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_train_epoch_end(self) -> None:
        print(f"epoch {self.current_epoch + 1} end {time.time():.6f}", flush=True)


def main() -> None:
    args = arguments()
    data = load(args.data)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(args.out, monitor="val/loss", save_last=True)],
        default_root_dir=args.out,
    )
    trainer.fit(
        BareVAE(data),
        loader(data["train"], data["batch_size"], shuffle=True),
        loader(data["val"], data["eval_batch_size"], shuffle=False),
    )


if __name__ == "__main__":
    main()
