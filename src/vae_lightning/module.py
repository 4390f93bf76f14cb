"""The LightningModule: a VAE composed of parts (network, posterior q(z|x), prior p(z),
likelihood p(x|z)) and a training objective."""

import inspect
import json
import os
from collections.abc import Sized
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from hydra.utils import instantiate
from lightning.pytorch.core.saving import load_hparams_from_tags_csv, load_hparams_from_yaml
from safetensors.torch import load_file

from vae_lightning.elbo import ELBOTerms
from vae_lightning.errors import ConfigError
from vae_lightning.legacy import migrate_hparams, migrate_state_dict
from vae_lightning.networks import LayerPosterior, Parts
from vae_lightning.objectives import ObjectiveOutput, TrainingState
from vae_lightning.parts import build_parts, part_or_default
from vae_lightning.registry import check_model_config, checkpoint_hyperparameters


class VAE(
    L.LightningModule,
    PyTorchModelHubMixin,
    library_name="vae-lightning",
    tags=["vae", "variational-autoencoder", "lightning"],
    pipeline_tag="unconditional-image-generation",
):
    """A VAE of parts, each a Hydra config of a class built here (conf/model/<part>/):

    - `network`: the encoder and decoder (mlp, conv) or a hierarchy of latent layers;
    - `posterior`: q(z|x) from the encoder's output (the diagonal Gaussian);
    - `prior`: p(z) (standard N(0, I), vamp);
    - `likelihood`: p(x|z) from the decoder's output (bernoulli, gaussian, gaussian_learned,
      discretized_logistic);
    - `objective`: the training loss, an `objectives.Objective` (default: the beta-weighted ELBO).

    A part left None is conf/'s default (conv, gaussian, standard, bernoulli, elbo).

    Outside this class everything uses its public API: `encode(x)` gives the posterior's mu and
    log sigma^2, `decode(z)` and `reconstruct(x)` images (the mean of p(x|z)), `sample(n)`
    decodings of prior draws, `kl_per_dim(x)` each latent dimension's KL to the prior,
    `elbo_terms(x)` / `log_importance_weights(x, k)` what objectives and evaluation need, and
    `posterior_by_layer(x)` each stochastic layer's posterior mean and KL per dimension. The
    network runs each of them with the other parts (networks/), so no method here asks which
    network it holds.

    Every constructor argument is saved in the checkpoint as plain data, so
    `VAE.load_from_checkpoint(path)` rebuilds the model with nothing else at hand (and with
    torch.load's safe `weights_only` unpickler). The Hugging Face Hub mixin keeps the same
    arguments, as JSON, in config.json: `save_pretrained(DIR)` writes it beside the weights
    (model.safetensors), `VAE.from_pretrained(DIR or repo id)` rebuilds the model from the two
    (strictly: every weight must fit), `push_to_hub(repo id)` publishes them; export.py writes
    such a folder from a checkpoint, with a model card. Read from a checkpoint or config.json,
    the parts' configs name the project's parts and torch's optimisers and schedulers only
    (registry.py): loading runs no other code a file names. Checkpoints and folders written
    before the parts (their arguments flat: network="conv", hidden_dims=...) load too
    (legacy.py).

    `optimizer` is a Hydra config of a partial optimiser, e.g. {"_target_": "torch.optim.Adam",
    "_partial_": True, "lr": 1e-3}; `scheduler`, when given, is Lightning's lr-scheduler dict
    with a partial scheduler under "scheduler" (e.g. {"scheduler": {"_target_":
    "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True, "T_max": 10}, "interval":
    "epoch"}).

    Remedies for posterior collapse, in the training loss only (validation, test and every
    reported ELBO use beta and no free bits): `kl_warmup` ramps the KL weight linearly from 0 to
    beta over that many `kl_warmup_unit` ("steps" or "epochs"); `free_bits` is a floor of that
    many nats per latent dimension (per layer, in a hierarchy) on the KL term (ELBOTerms.loss).

    `grad_skip_threshold` > 0 skips outlier updates as VDVAE does (Child 2021): a step whose
    gradient norm exceeds it, or is not finite, has its gradients zeroed (see
    on_before_optimizer_step).

    `condition="label"` makes it Sohn et al.'s conditional VAE (2015) of the data's `class_names`
    (the datamodule's, given by train.py, kept in the checkpoint for sample.py's label=names):
    q(z|x,y), p(x|z,y) and the prior p(z). Every method above then takes `y`, the class index of
    each image (batch,), and refuses to run without it; an unconditional model ignores `y`.
    `condition_of(labels, datamodule)` gives y of a batch's labels.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        network: dict[str, Any] | None = None,
        posterior: dict[str, Any] | None = None,
        prior: dict[str, Any] | None = None,
        likelihood: dict[str, Any] | None = None,
        objective: dict[str, Any] | None = None,
        latent_dim: int = 10,
        beta: float = 1.0,
        kl_warmup: int = 0,
        kl_warmup_unit: str = "steps",
        free_bits: float = 0.0,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        grad_skip_threshold: float = 0.0,
        condition: str | None = None,
        n_classes: int | None = None,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        if condition not in (None, "label"):
            raise ConfigError("model.condition", condition, "null or label")
        if condition and not n_classes:
            raise ValueError("condition='label' needs n_classes, the number of the data's classes")
        # Saved filled in, so a checkpoint says which parts it holds whatever conf/ says later.
        network = part_or_default("network", network)
        posterior = part_or_default("posterior", posterior)
        prior = part_or_default("prior", prior)
        likelihood = part_or_default("likelihood", likelihood)
        objective = part_or_default("objective", objective)
        self.save_hyperparameters()
        self.image_shape = tuple(image_shape)
        self.n_classes = n_classes if condition else 0
        parts = build_parts(
            {**self.hparams, "n_classes": self.n_classes}, self.image_shape, self.encode
        )
        self.likelihood = parts["likelihood"]
        self.posterior = parts["posterior"]
        self.network = parts["network"]
        self.prior = parts["prior"]
        self.objective = parts["objective"]
        # Updates skipped by grad_skip_threshold, counted on the device: no host sync per step.
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long), persistent=False)
        self.beta = beta
        self.dataset_size = 1  # of the training data, known once the trainer sets up
        self.example_input_array = torch.zeros(1, *self.image_shape)
        if self.n_classes:
            if getattr(self.network, "n_classes", 0) != self.n_classes:
                raise ConfigError(
                    "model.condition", condition, "null with this network: it takes no condition"
                )
            self.example_input_array = (self.example_input_array, torch.zeros(1, dtype=torch.long))
        # NHWC conv weights (and inputs, in encode): faster kernels on some CPUs and GPUs
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.network.compile_networks()

    @property
    def parts(self) -> Parts:
        """The parts the network's passes combine with its own."""
        return Parts(self.posterior, self.prior, self.likelihood)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> "VAE":
        """Lightning's, once the saved arguments (or `hparams_file`'s, which replace them) are
        found to name only the project's parts, since building the model instantiates them;
        flat arguments of before the parts become today's (legacy.py)."""
        if hparams_file is None:
            saved = checkpoint_hyperparameters(checkpoint_path, weights_only)
        elif str(hparams_file).lower().endswith(".csv"):
            saved = load_hparams_from_tags_csv(hparams_file)
        else:
            saved = load_hparams_from_yaml(hparams_file)
        arguments = migrate_hparams(saved)
        check_model_config(arguments)
        if arguments is not saved:  # Lightning drops the flat keys that __init__ does not take
            kwargs = {**arguments, **kwargs}
        if weights_only is not None:  # an argument of newer Lightning releases only
            kwargs["weights_only"] = weights_only
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            **kwargs,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before the weights are loaded, on loading and on resuming alike: a flat model's
        # weights under today's names.
        network = self.hparams.network
        checkpoint["state_dict"] = migrate_state_dict(checkpoint["state_dict"], network)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "VAE":
        """The model of a Hub folder or repository: config.json's arguments (the whole file, so
        that flat ones of before the parts are read too), checked to name only the project's
        parts before they build anything, then model.safetensors' weights, strictly: weights
        that did not fit would leave layers at their random initialisation without a word."""

        def fetch(filename: str) -> str:
            if os.path.isdir(model_id):
                return os.path.join(model_id, filename)
            return hf_hub_download(
                repo_id=model_id,
                filename=filename,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )

        config = json.loads(Path(fetch(constants.CONFIG_NAME)).read_text())
        arguments = migrate_hparams({**config, **model_kwargs})
        check_model_config(arguments)
        takes = inspect.signature(cls.__init__).parameters
        model = cls(**{key: value for key, value in arguments.items() if key in takes})
        weights = load_file(fetch(constants.SAFETENSORS_SINGLE_FILE), device=str(map_location))
        model.load_state_dict(migrate_state_dict(weights, model.hparams.network), strict=strict)
        return model.eval()  # as PyTorchModelHubMixin hands its models over

    # --- the model -------------------------------------------------------------------------

    def _given(self, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The condition to pass the network: y for a conditional model (which cannot run
        without it), nothing for an unconditional one."""
        if not self.n_classes:
            return {}
        if y is None:
            raise ValueError(
                "this conditional VAE (condition='label') needs y, the class index of each image"
            )
        return {"y": y}

    def condition_of(self, labels: torch.Tensor, datamodule: Any = None) -> torch.Tensor | None:
        """y of a batch's labels: each image's class index, the `datamodule`'s class column
        where the labels have several (the shapes' factors); None for an unconditional model."""
        if not self.n_classes:
            return None
        return labels if labels.ndim == 1 else datamodule.classes(labels)

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and log sigma^2 of q(z|x) (of the top layer, in a hierarchy), each (batch,
        latent_dim)."""
        h = self.network.encode(self._in_memory_format(x), **self._given(y))
        return self.posterior.gaussian(h)

    def posterior_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The deterministic z of q(z|x) that reconstructions decode, (batch, latent features)
        as `decode` takes it: mu of a Gaussian posterior, a flow's image of its base mu (not
        `encode`'s mu, which the flow moves), the top layer's in a hierarchy, a VQ-VAE's
        quantised code map flattened."""
        h = self.network.encode(self._in_memory_format(x), **self._given(y))
        return self.posterior.mean(h).flatten(1)

    def _in_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|z): images (batch, C, H, W) in [0, 1] (in a hierarchy, with every
        layer below the top at its prior mean)."""
        return self.likelihood.mean(self.network.decode(z, **self._given(y)))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|z) at z = E_q[z] (every layer's, in a hierarchy): the deterministic
        reconstruction shown in grids."""
        x = self._in_memory_format(x)
        return self.likelihood.mean(self.network.reconstruct(x, self.parts, **self._given(y)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """`model(x)` is `reconstruct(x)`; with `example_input_array`, it gives Lightning's model
        summary each layer's FLOPs and input and output sizes (not a column of zeros)."""
        return self.reconstruct(x, y)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decodings of n draws from the prior (of classes y (n,), for a conditional model); the
        same generator state gives the same draws. A temperature below 1 scales the prior's
        draws (every layer's, in a hierarchy) towards their means: fewer, cleaner modes (NVAE
        and VDVAE show samples at 0.6 to 0.9)."""
        params = self.network.sample(n, self.parts, generator, temperature, **self._given(y))
        return self.likelihood.mean(params)

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ELBOTerms:
        """recon = -log p(x|z) at one z ~ q(z|x) and KL(q(z|x) || p(z)), per image (in a
        hierarchy: the sum of the layers' KLs, and each layer's in kl_per_layer)."""
        x = self._in_memory_format(x)
        return self.network.elbo_terms(x, self.parts, **self._given(y))

    def log_importance_weights(
        self,
        x: torch.Tensor,
        k: int,
        stop_posterior_grad: bool = False,
        y: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x, z_i) - log q(z_i|x) for k draws z_i ~ q(z|x) per image (k, batch), and z (in
        a hierarchy: every layer's draws, flattened and concatenated); for a conditional model,
        of p(x, z_i|y) and q(z_i|x,y), so that they bound log p(x|y)."""
        x = self._in_memory_format(x)
        return self.network.log_importance_weights(
            x, k, self.parts, stop_posterior_grad, **self._given(y)
        )

    def kl_per_dim(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z_d|x) || p(z_d)) of each latent dimension d, per image (batch, latent_dim); a
        prior without a closed-form KL is estimated at draws that leave training's random stream
        where it was (Prior.reported_kl_per_dim)."""
        return self.prior.reported_kl_per_dim(*self.encode(x, y))

    def posterior_by_layer(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> list[LayerPosterior]:
        """Each stochastic layer's posterior mean and KL per latent dimension, bottom first, from
        one pass over x. A map layer's dimension is a channel, its KL summed over the positions;
        in a hierarchy both are taken along the posterior means (z_>l at E_q), so the numbers
        are deterministic."""
        x = self._in_memory_format(x)
        return self.network.posterior_by_layer(x, self.parts, **self._given(y))

    # --- training ----------------------------------------------------------------------------

    def kl_weight(self, batch_idx: int) -> float:
        """beta, ramped linearly from 0 during the KL warm-up; computed on the host, no sync."""
        warmup = self.hparams.kl_warmup
        if warmup <= 0:
            return self.beta
        if self.hparams.kl_warmup_unit == "epochs":
            progress = self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches)
        else:
            progress = self.global_step
        return self.beta * min(1.0, progress / warmup)

    def setup(self, stage: str) -> None:
        # The training-set size, for objectives that estimate q(z) from a minibatch: a datamodule
        # knows it before any data is loaded, so validation and test (eval.py) use it too.
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "split"):
            self.dataset_size = len(datamodule.split("train"))

    def on_train_start(self) -> None:
        # The data fit really iterates, loaded by now: with plain dataloaders too, no datamodule.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if isinstance(dataset, Sized):
            self.dataset_size = len(dataset)
        elif self.objective.needs_dataset_size:
            raise ValueError(
                f"{type(self.objective).__name__} needs the number of training images, but the "
                "training dataloader's dataset has no len(): give fit a sized dataset"
            )

    def _training_state(self, kl_weight: float, free_bits: float = 0.0) -> TrainingState:
        return TrainingState(kl_weight, free_bits, self.global_step, self.dataset_size)

    def _step(self, batch, stage: str, state: TrainingState) -> torch.Tensor:
        images, labels = batch
        # The objectives stay unconditional: a conditional model is given them with the batch's
        # classes bound, which their calls of elbo_terms and log_importance_weights then use.
        model = self
        if self.n_classes:
            model = ConditionedOn(self, self.condition_of(labels, self.trainer.datamodule))
        out: ObjectiveOutput = self.objective(model, images, state)
        if stage == "train" and not self._logs_this_step():
            return out.loss
        terms = out.terms
        if terms is None and stage != "train":  # reported ELBOs are of the model, any objective
            terms = model.elbo_terms(images)
        logged = {f"{stage}/loss": out.loss}
        if terms is not None:
            logged |= {
                f"{stage}/recon": terms.recon.mean(),
                f"{stage}/kl": terms.kl.mean(),
                f"{stage}/elbo": terms.elbo.mean(),
            }
            if terms.kl_per_layer is not None:
                kl_per_layer = terms.kl_per_layer.mean(dim=0)
                logged |= {
                    f"{stage}/kl_layer{layer}": kl for layer, kl in enumerate(kl_per_layer, 1)
                }
        logged |= {f"{stage}/{name}": value for name, value in out.logged.items()}
        logged |= {f"{stage}/{name}": value for name, value in self.posterior.logged().items()}
        if stage == "train":
            if self.hparams.kl_warmup > 0:  # otherwise beta is a constant, in the hparams
                logged["train/beta"] = state.kl_weight
            logged |= {f"train/{name}": value for name, value in self.likelihood.logged().items()}
            if self.hparams.grad_skip_threshold > 0:
                logged["train/skipped_updates"] = self.skipped_updates.float()
        # Logged as tensors: Lightning reduces them on its own schedule, with no host sync here.
        self.log_dict(
            logged,
            prog_bar=stage != "test",
            batch_size=images.shape[0],
            sync_dist=stage != "train",  # under DDP: val/test over all shards, not rank zero's
        )
        return out.loss

    def _logs_this_step(self) -> bool:
        """Whether the trainer passes this training step's values on to the loggers; only then
        are they logged, since each self.log costs Python work comparable to a small model's
        step, and values that no logger receives are never seen.

        This copies Lightning's private rule, `_LoggerConnector.should_update_logs`
        (lightning/pytorch/trainer/connectors/logger_connector/logger_connector.py), whole:
        never with log_every_n_steps=0; else when the step about to finish is a multiple of
        it, or the trainer is about to stop. Lightning counts `_batches_that_stepped`, which
        equals the public `global_step` here (one optimiser, and a step is never skipped by
        returning None). fast_dev_run is added, so its single step shows its values.
        """
        trainer = self.trainer
        if trainer.fast_dev_run:
            return True
        every = trainer.log_every_n_steps
        if every == 0:
            return False
        return (self.global_step + 1) % every == 0 or trainer.should_stop

    def training_step(self, batch, batch_idx):
        state = self._training_state(self.kl_weight(batch_idx), self.hparams.free_bits)
        return self._step(batch, "train", state)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", self._training_state(self.beta))

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test", self._training_state(self.beta))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip an outlier update (VDVAE, Child 2021: "skip updates whose gradient norm is
        above a threshold"): with a gradient norm above grad_skip_threshold, or not finite,
        every gradient is zeroed before the optimiser sees it (and before Lightning's gradient
        clipping), so the outlier never enters Adam's moments, whose second moment it would
        inflate for thousands of steps. Adam still applies its momentum that step.

        No host sync: the test, the zeroing and the count all stay on the device. VDVAE reads the
        norm back each step to skip optimizer.step() itself; that sync would cost a small model
        on CPU little, but a GPU run its overlap of host and device, every step."""
        threshold = self.hparams.grad_skip_threshold
        if threshold <= 0:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        skip = ~(norm <= threshold)  # a NaN norm compares False: skipped too
        for grad in grads:
            grad.masked_fill_(skip, 0.0)
        self.skipped_updates += skip

    def configure_optimizers(self) -> Any:
        """The optimiser over the model's parameters (the objective's own networks, if any, in
        the parameter groups it asks for), with the scheduler when one is configured."""
        extra_groups = self.objective.param_groups()
        own = {id(p) for group in extra_groups for p in group["params"]}
        groups = [{"params": [p for p in self.parameters() if id(p) not in own]}, *extra_groups]
        if self.hparams.optimizer is None:
            optimizer = torch.optim.Adam(groups)
        else:
            optimizer = instantiate(self.hparams.optimizer)(groups)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = dict(self.hparams.scheduler)
        scheduler["scheduler"] = instantiate(scheduler["scheduler"])(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


class ConditionedOn:
    """A conditional VAE as the objectives see it: `elbo_terms(x)` and
    `log_importance_weights(x, k, stop_posterior_grad)` are the model's given y = `labels`, the
    batch's class indices (-1 where data.labelled hides one); `model` and `labels` are there for
    an objective that reads them itself (M2), and every other attribute is the model's."""

    def __init__(self, model: VAE, labels: torch.Tensor):
        self.model, self.labels = model, labels

    def elbo_terms(self, x: torch.Tensor) -> ELBOTerms:
        return self.model.elbo_terms(x, self.labels)

    def log_importance_weights(
        self, x: torch.Tensor, k: int, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.log_importance_weights(x, k, stop_posterior_grad, self.labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
