"""The Keras segmentation_models workflow in pixelwise: build, compile, fit on arrays, read the history, predict.

    model = KerasModel(Unet('resnet18', classes=3, activation='softmax', encoder_weights=None, encoder_freeze=True))
    model.compile(loss='categorical_crossentropy', optimizer='adam', lr=0.001,
                  metrics=[IOUScore(threshold=0.5), FScore(threshold=0.5)])
    history = model.fit(x_train, y_train, batch_size=8, epochs=20, validation_data=(x_val, y_val)).history
    probabilities = model.predict(x_val)     # [N, H, W, 3], any image size

Data: synthetic cell images (``pixelwise.data.synthetic.cells``) with the seed's three classes, background /
cell interior / cell boundary (built from the instance labels), as NumPy arrays ``[N, H, W, 1]`` uint8 and
one-hot masks ``[N, H, W, 3]``, the way Keras users hold them.

Run: ``python examples/keras_style.py`` (``--help`` for sizes); it prints the history and where the run is.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

import pixelwise
from pixelwise.data.synthetic import cells
from pixelwise.data.targets import TargetOptions, training_targets
from pixelwise.metrics.keras import FScore, IOUScore
from pixelwise.training.fit import FitResult

CLASSES = 3
"""background, cell interior, cell boundary"""
BOUNDARY_WIDTH = 2
"""Width of the boundary class in pixels."""
THRESHOLD = 0.5


def three_class_arrays(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [n, size, size, 1]`` and one-hot masks ``uint8 [n, size, size, 3]``."""
    options = TargetOptions(target="boundary", boundary_width=BOUNDARY_WIDTH)
    samples = cells(n, size=size, seed=seed)
    labels = [training_targets(s.semantic, s.instances, options)[0] for s in samples]
    images = np.stack([s.image for s in samples])[..., None]
    one_hot = np.eye(CLASSES, dtype=np.uint8)[np.stack(labels)]
    return images, one_hot


def main(argv: Sequence[str] | None = None) -> FitResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=24, help="training images")
    parser.add_argument("--val", type=int, default=8, help="validation images")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder-depth", type=int, default=5, help="U-Net levels (3: a tiny, fast model)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)

    x_train, y_train = three_class_arrays(args.train, args.size, seed=0)
    x_val, y_val = three_class_arrays(args.val, args.size, seed=1)
    decoder = [256, 128, 64, 32, 16][-args.encoder_depth :]
    unet = pixelwise.Unet(
        "resnet18",
        in_channels=1,
        classes=CLASSES,
        activation="softmax",
        encoder_weights=None,
        encoder_freeze=True,
        encoder_depth=args.encoder_depth,
        decoder_channels=decoder,
    )
    model = pixelwise.KerasModel(unet)
    model.compile(
        loss="categorical_crossentropy",
        optimizer="adam",
        lr=1e-3,
        metrics=[IOUScore(threshold=THRESHOLD), FScore(threshold=THRESHOLD)],
    )
    result = model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        runs_dir=args.runs_dir,
        name=args.name,
        progress=False,
    )
    for key, values in result.history.items():
        print(f"{key:>15}: " + " ".join(f"{v:.3f}" for v in values))
    # the trained model with its input normalisation: any image size, Keras' [N, H, W, K] out
    probabilities = model.predict(x_val[:2])
    print(f"probabilities {probabilities.shape}; run directory: {result.run_dir}")
    return result


if __name__ == "__main__":
    main()
