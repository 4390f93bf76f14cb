"""Conditional accuracy (features/accuracy.py) on a constructed case: real Fashion-MNIST test
images "generated" for their own class score the classifier's accuracy on them, class by class;
stated as the next class, they score about nothing."""

import torch

from tests.helpers import FASHION_MNIST_SUBSET
from vae_lightning.data.classes import CLASS_NAMES
from vae_lightning.data.in_memory import to_unit_float
from vae_lightning.data.shapes import SHAPES as SHAPE_NAMES
from vae_lightning.data.shapes import render, sample_factor_indices
from vae_lightning.data.sources import read_idx_split
from vae_lightning.features import FASHION_MNIST, SHAPES
from vae_lightning.features.accuracy import conditional_accuracy


def test_real_images_of_their_class_score_the_classifiers_accuracy_on_them_of_another_none():
    test = read_idx_split(FASHION_MNIST_SUBSET, "test", size=28, channels=1)  # 200 images
    images, labels = to_unit_float(test.images), test.labels
    with torch.no_grad():
        predicted = FASHION_MNIST.classifier()(images).argmax(dim=1)

    own = conditional_accuracy(images, labels, batch_size=64)
    assert own.overall == (predicted == labels).double().mean().item() > 0.8
    for c in range(10):
        of_class = labels == c
        assert own.per_class[c] == (predicted[of_class] == c).double().mean().item()
    assert own.classifier_test_accuracy == FASHION_MNIST.record()["test_accuracy"] == 0.8923

    next_class = (labels + 1) % 10
    wrong = conditional_accuracy(images, next_class)
    assert wrong.overall == (predicted == next_class).double().mean().item() < 0.05

    metrics = own.metrics(CLASS_NAMES["fashion_mnist"])
    assert metrics["conditional_accuracy"] == own.overall
    assert metrics["conditional_accuracy/Sneaker"] == own.per_class[7]
    assert metrics["classifier_test_accuracy"] == 0.8923 and len(metrics) == 12


def test_the_shapes_classifier_judges_a_shapes_models_class_by_its_shape_head():
    """Rendered shapes "generated" for their own shape score the shape head's accuracy on them;
    the shapes' classifier is the one of data=shapes (a CVAE there conditions on the shape)."""
    factors = sample_factor_indices(300, seed=5)
    images = to_unit_float(render(factors, 32))
    with torch.no_grad():
        shape_logits = SHAPES.classifier()(images)[0]
    predicted, shapes = shape_logits.argmax(dim=1), factors[:, 0]

    own = conditional_accuracy(images, shapes, SHAPES, batch_size=64)
    assert own.overall == (predicted == shapes).double().mean().item() > 0.8
    assert own.classifier_test_accuracy == SHAPES.record()["test_accuracy"]
    assert set(own.metrics(SHAPE_NAMES)) == {
        "conditional_accuracy", "classifier_test_accuracy",
        *(f"conditional_accuracy/{name}" for name in SHAPE_NAMES),
    }  # fmt: skip
