"""Feature networks: images in [0, 1] (N, C, H, W) to feature vectors (N, d), the space in which
the sample-quality metrics (vae_lightning.sample_quality) compare generated and real images.

No machine here can download Inception's weights, so Fashion-MNIST has its own small classifier,
trained on the real training split by tools/make_feature_network.py and shipped in this package
with the SHA-256 of its weights, so that every machine computes the same features. Its numbers
are NOT Inception FIDs: they compare only with numbers of the same network, and its test
accuracy goes beside each of them. Its classifications serve the conditional-accuracy check of
conditional VAEs too. A user who has Inception weights loads them with `inception_features`.
"""

import hashlib
import json
import zipfile
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn

from vae_lightning.errors import UserError

FASHION_MNIST_WEIGHTS = Path(str(files(__package__) / "fashion_mnist.safetensors"))
# Beside the weights: their SHA-256, test accuracy, seed and the command that made them.
FASHION_MNIST_RECORD = FASHION_MNIST_WEIGHTS.with_suffix(".json")
INCEPTION_SIZE = 299  # the input size Inception v3 was trained at


class DamagedWeightsError(UserError):
    """A shipped weights file whose SHA-256 is not the recorded one."""


class FeatureNetwork(nn.Module):
    """What the metrics need of a network: `forward` gives (N, num_features) features of images in
    [0, 1], `name` goes into the metrics' names (`fid_<name>`), and `test_accuracy` (None where
    not known) is reported beside them."""

    name: str
    num_features: int
    test_accuracy: float | None = None


class FashionMNISTClassifier(nn.Module):
    """A small conv classifier of 28x28 grey images: three conv-ReLU-max-pool blocks, a 128-unit
    hidden layer (the features) and the 10 class logits."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 3x3
            nn.Flatten(),
            nn.Linear(32 * 3 * 3, self.num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The hidden layer's (N, 128) activations of images in [0, 1] (N, 1, 28, 28)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The (N, 10) class logits."""
        return self.head(self.features(images))


class ClassifierFeatures(FeatureNetwork):
    """A classifier's hidden-layer features, as a FeatureNetwork."""

    def __init__(self, classifier: FashionMNISTClassifier, name: str, test_accuracy: float):
        super().__init__()
        self.classifier = classifier.eval()
        self.name, self.num_features = name, classifier.num_features
        self.test_accuracy = test_accuracy

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fashion_mnist_record() -> dict:
    """The record written with the shipped weights: test accuracy, seed, command, SHA-256."""
    return json.loads(FASHION_MNIST_RECORD.read_text())


def fashion_mnist_classifier(weights: Path = FASHION_MNIST_WEIGHTS) -> FashionMNISTClassifier:
    """The shipped Fashion-MNIST classifier in eval mode, after checking that its weights file
    has the recorded SHA-256 (safetensors: loading it runs no code)."""
    expected, found = fashion_mnist_record()["sha256"], sha256_of(weights)
    if found != expected:
        raise DamagedWeightsError(
            f"{weights} has SHA-256 {found}, not the {expected} recorded in "
            f"{FASHION_MNIST_RECORD}: the file was changed; reinstall vae-lightning, or rerun "
            "tools/make_feature_network.py to make both anew"
        )
    classifier = FashionMNISTClassifier()
    classifier.load_state_dict(load_file(weights))
    return classifier.eval()


def fashion_mnist_features() -> ClassifierFeatures:
    """The shipped classifier's features, named `fmnist_features`."""
    return ClassifierFeatures(
        fashion_mnist_classifier(), "fmnist_features", fashion_mnist_record()["test_accuracy"]
    )


# The data sets with a shipped feature network: data name -> (image shape, the network's maker).
SHIPPED = {"fashion_mnist": ((1, 28, 28), fashion_mnist_features)}


def shipped_features(data_name: str, image_shape) -> FeatureNetwork | None:
    """The package's feature network of a data set at the shape it was trained on; None for
    other data or shapes."""
    shape, make = SHIPPED.get(data_name, (None, None))
    return make() if shape == tuple(image_shape) else None


class InceptionFeatures(FeatureNetwork):
    """The 2048 pool features of an Inception v3 that a user provides, named
    `inception_features`. Grey images are repeated to three channels and every image is resized
    to 299x299 (bilinearly, as pytorch-fid does); torchvision's network then gets them in
    [-1, 1], the range the original weights were trained on, and a TorchScript module gets them in
    [0, 1] (pytorch-fid's InceptionV3 scales them itself)."""

    name = "inception_features"

    def __init__(self, network: nn.Module, scripted: bool):
        super().__init__()
        self.network, self.scripted = network.eval(), scripted
        self.num_features = 2048

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        images = F.interpolate(
            images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        if not self.scripted:
            return self.network(2 * images - 1)
        features = self.network(images)
        if isinstance(features, list | tuple):  # pytorch-fid: one (N, d, 1, 1) map per block
            features = features[-1]
        return features.flatten(start_dim=1)


def inception_features(path: str | Path) -> InceptionFeatures:
    """An Inception v3 from a user's file: a TorchScript module (pytorch-fid's FID Inception
    scripted or traced: images in [0, 1] to (N, 2048) features or a list ending with
    (N, 2048, 1, 1)), or a state_dict of torchvision's `inception_v3` (torch.save'd, read with
    weights_only, or .safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}")
    if zipfile.is_zipfile(path):
        # A TorchScript archive holds its code; a torch.save'd state_dict does not.
        with zipfile.ZipFile(path) as archive:
            scripted = any("/code/" in name for name in archive.namelist())
        if scripted:
            return InceptionFeatures(torch.jit.load(path, map_location="cpu"), scripted=True)
    if path.suffix == ".safetensors":
        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    network = torchvision.models.inception_v3(
        weights=None,
        aux_logits=any(key.startswith("AuxLogits.") for key in state_dict),
        transform_input=False,
        init_weights=False,
    )
    network.load_state_dict(state_dict)
    network.fc = nn.Identity()  # the pooled 2048 features, not the ImageNet logits
    return InceptionFeatures(network, scripted=False)
