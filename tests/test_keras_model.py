"""KerasModel: Keras' compile / fit / predict on arrays, checked against the masks it was trained to draw."""

import numpy as np
import pytest

import pixelwise
from pixelwise.errors import ConfigError
from pixelwise.metrics.keras import IOUScore

SIZE, CLASSES = 32, 2


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark ``uint8 [n, SIZE, SIZE, 1]`` images with a bright square each; one-hot masks ``[n, SIZE, SIZE, 2]``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, SIZE, SIZE, 1), dtype=np.uint8)
    ids = np.zeros((n, SIZE, SIZE), dtype=np.int64)
    for image, mask in zip(images, ids, strict=True):
        top, left, side = *rng.integers(2, SIZE // 2, 2), int(rng.integers(6, SIZE // 2))
        image[top : top + side, left : left + side] = rng.integers(190, 256, (side, side, 1), dtype=np.uint8)
        mask[top : top + side, left : left + side] = 1
    return images, np.eye(CLASSES, dtype=np.uint8)[ids]


def tiny_model() -> pixelwise.Unet:
    return pixelwise.Unet(
        "resnet18",
        in_channels=1,
        classes=CLASSES,
        activation="softmax",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=[16, 8, 8],
    )


def test_compile_fit_predict_learns_the_squares(tmp_path):
    x, y = squares(8, seed=0)
    x_test, y_test = squares(4, seed=1)
    model = pixelwise.KerasModel(tiny_model())
    model.compile(loss="categorical_crossentropy", optimizer="adam", lr=1e-2, metrics=[IOUScore(threshold=0.5)])
    result = model.fit(
        x,
        y,
        validation_data=(x_test, y_test),
        epochs=12,
        batch_size=4,
        runs_dir=str(tmp_path),
        name="k",
        progress=False,
    )
    assert model.history is result.history and len(model.history["val_iou_score"]) == 12
    probabilities = model.predict(x_test)
    assert probabilities.shape == (4, SIZE, SIZE, CLASSES)  # Keras' layout
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)
    labels = model.predict(x_test, labels=True)
    np.testing.assert_array_equal(labels, probabilities.argmax(-1))
    truth = y_test.argmax(-1).astype(bool)
    iou = (truth & (labels == 1)).sum() / (truth | (labels == 1)).sum()
    assert iou > 0.8, iou  # squares drawn on images it never saw (all background: 0)
    odd = model.predict(np.pad(x_test, ((0, 0), (0, 5), (0, 3), (0, 0))), labels=True)  # any size
    assert odd.shape == (4, SIZE + 5, SIZE + 3)


def test_fit_keywords_override_compile_and_bad_options_are_named(tmp_path):
    x, y = squares(4, seed=2)
    model = pixelwise.KerasModel(tiny_model())
    assert model.history == {}
    assert model.predict(x).shape == (4, SIZE, SIZE, CLASSES)  # before fit: the model as it is
    model.compile(loss="dice_loss", epochs=5, not_an_option=1)
    with pytest.raises(ConfigError, match="not_an_option"):
        model.fit(x, y, runs_dir=str(tmp_path), name="bad")
    model.compile(loss="dice_loss", epochs=5)
    result = model.fit(x, y, epochs=1, batch_size=2, runs_dir=str(tmp_path), name="one", progress=False)
    assert len(result.history["loss"]) == 1
