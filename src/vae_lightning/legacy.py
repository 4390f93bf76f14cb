"""Checkpoints, Hub folders and run configs written before the model was parts: their VAE
arguments flat (network="conv", hidden_dims=[32, 64], likelihood="gaussian", gaussian_sigma=0.1,
prior="vamp", n_pseudo_inputs=500, ...) and their network's weights under encoder., decoder. or
hierarchy. They are turned into today's arguments and weights as they load; torch-free, so that
config.py can name a moved key on a command line too.
"""

import re
from typing import Any

from vae_lightning.options import part_config

# The flat argument of before -> (its part, its key there), and the part each kind of part's
# name became. Keys a part's config lacks (dense_dim of an MLP) are dropped with the old name.
MOVED = {
    "hidden_dims": ("network", "hidden_dims"),
    "dense_dim": ("network", "dense_dim"),
    "n_layers": ("network", "n_layers"),
    "latent_dims": ("network", "latent_dims"),
    "layer_channels": ("network", "layer_channels"),
    "logvar_bound": ("network", "logvar_bound"),
    "gaussian_sigma": ("likelihood", "sigma"),
    "gaussian_sigma_per": ("likelihood", "per"),
    "n_pseudo_inputs": ("prior", "n_pseudo_inputs"),
}
NAMED = {"network": "conv", "likelihood": "bernoulli", "prior": "standard"}  # the old defaults


def is_flat(hparams: dict[str, Any]) -> bool:
    """Whether a model's arguments are of before the parts: a part named by a string, or a key
    that moved into a part (a user's own model config may add one to a preset of today)."""
    return any(isinstance(hparams.get(part), str) for part in NAMED) or any(
        key in hparams for key in MOVED
    )


def migrate_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Today's VAE arguments for flat ones (others are returned as they are): each named part
    becomes its config in conf/model/<part>/ with the old flat values of its keys."""
    if not is_flat(hparams):
        return hparams
    flat = dict(hparams)
    parts = {}
    for part, default in {**NAMED, "posterior": "gaussian"}.items():
        value = flat.pop(part, default)  # a hand-edited config.json may mix both layouts
        parts[part] = part_config(part, value) if isinstance(value, str) else dict(value)
    for old, (part, key) in MOVED.items():
        value = flat.pop(old, None)
        if key in parts[part] and value is not None:
            parts[part][key] = value
    latent_dims = parts["network"].get("latent_dims")
    if latent_dims:  # the hierarchy's top layer had latent_dims[-1] dims, whatever latent_dim was
        flat["latent_dim"] = latent_dims[-1]
    return {**flat, **parts}


def migrate_state_dict(state_dict: dict[str, Any], network: dict[str, Any]) -> dict[str, Any]:
    """The weights of a flat model under today's names, given today's network config (others are
    returned as they are): the hierarchy's are the network's; the encoder's and decoder's move
    into the network, their nested layer lists and Gaussian head flattened into one Sequential
    each."""
    if not any(key.startswith(("encoder.", "decoder.", "hierarchy.")) for key in state_dict):
        return state_dict
    kind = network["_target_"].rpartition(".")[2]
    n_hidden = len(network.get("hidden_dims") or ())
    if kind == "HierarchicalNetwork":
        renames = [(r"^hierarchy\.", "network.")]
    elif kind == "MLPNetwork":
        renames = [
            (r"^encoder\.body\.1\.(\d+)\.", lambda m: f"network.encoder.{1 + int(m[1])}."),
            (r"^encoder\.head\.linear\.", f"network.encoder.{1 + 2 * n_hidden}."),
            (r"^decoder\.net\.0\.(\d+)\.", r"network.decoder.\1."),
            (r"^decoder\.net\.1\.", f"network.decoder.{2 * n_hidden}."),
        ]
    else:  # ConvNetwork: 2 modules per conv layer, then Flatten, Linear, ReLU before the head
        renames = [
            (r"^encoder\.body\.", "network.encoder."),
            (r"^encoder\.head\.linear\.", f"network.encoder.{2 * n_hidden + 3}."),
            (r"^decoder\.net\.", "network.decoder."),
        ]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key, found = re.subn(pattern, replacement, key)
            if found:
                break
        renamed[key] = value
    return renamed
