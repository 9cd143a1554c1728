"""Synthetic generators: determinism, label consistency, touching cells, and the written folder."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pixelwise.data import SegmentationFolder, cells, check_dataset, shapes, write_synthetic
from pixelwise.errors import ConfigError


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((instances[:, :-1], instances[:, 1:]), (instances[:-1], instances[1:])):
        both = (a > 0) & (b > 0) & (a != b)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[both].tolist(), b[both].tolist(), strict=True)}
    return pairs


@pytest.mark.parametrize("generate", [cells, shapes])
def test_same_seed_same_arrays_and_prefix_stable(generate):
    a, b = generate(3, size=64, seed=7), generate(2, size=64, seed=7)
    for x, y in zip(a[:2], b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.semantic, y.semantic)
        assert np.array_equal(x.instances, y.instances)
    assert not np.array_equal(a[0].image, generate(1, size=64, seed=8)[0].image)
    assert not np.array_equal(a[0].image, a[1].image)


def test_cells_labels_are_consistent_and_cells_touch():
    samples = cells(4, size=128, seed=0)
    touching = 0
    for s in samples:
        assert s.image.shape == (128, 128) and s.image.dtype == np.uint8
        assert s.semantic.dtype == np.uint8 and s.instances.dtype == np.int32
        assert set(np.unique(s.semantic).tolist()) == {0, 1}
        assert np.array_equal(s.instances > 0, s.semantic == 1)
        ids = np.unique(s.instances)
        assert ids.tolist() == list(range(ids.size))  # 0 and 1..M, no gaps
        for label in ids[1:]:  # every instance is one connected piece
            assert ndimage.label(s.instances == label)[1] == 1
        touching += len(touching_pairs(s.instances))
    assert touching >= 4


def test_cells_foreground_is_brighter_but_noisy():
    s = cells(1, size=128, seed=3)[0]
    inside, outside = s.image[s.semantic == 1].astype(float), s.image[s.semantic == 0].astype(float)
    assert inside.mean() - outside.mean() > 30  # learnable foreground
    assert outside.std() > 5 and inside.std() > 5  # but not a clean two-level image


def test_shapes_classes_and_occlusion():
    samples = shapes(4, size=96, seed=0)
    seen = set()
    for s in samples:
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert set(np.unique(s.semantic).tolist()) <= {0, 1, 2, 3}
        assert np.array_equal(s.instances > 0, s.semantic > 0)
        for label in np.unique(s.instances)[1:]:  # one class per instance
            assert np.unique(s.semantic[s.instances == label]).size == 1
        seen |= set(np.unique(s.semantic).tolist())
    assert seen == {0, 1, 2, 3}


def test_write_synthetic_folder_round_trip(tmp_path):
    root = write_synthetic(tmp_path / "cells", "cells", n_train=3, n_val=2, size=64, seed=1)
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert Image.open(root / "train" / "masks" / "0000.png").mode == "P"
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary files left
    train = SegmentationFolder(root, "train", instances=True)
    item = train[0]
    assert train.classes.names == ["background", "cell"] and train.num_classes == 2 and train.in_channels == 1
    expected = cells(5, size=64, seed=1)
    assert np.array_equal(item["mask"].numpy(), expected[0].semantic)
    assert np.array_equal(item["instances"].numpy(), expected[0].instances)
    assert np.allclose(item["image"].numpy()[0], expected[0].image / 255)
    val = SegmentationFolder(root, "val")
    assert np.array_equal(val[0]["mask"].numpy(), expected[3].semantic)  # val continues after train
    assert check_dataset(root, "train", progress=False).ok

    shapes_root = write_synthetic(tmp_path / "shapes", "shapes", n_train=2, n_val=1, size=48)
    data = SegmentationFolder(shapes_root, "train")
    assert data.in_channels == 3 and data.classes.names == ["background", "circle", "rectangle", "triangle"]
    assert not (shapes_root / "train" / "instances").exists()
    with pytest.raises(ConfigError, match="did you mean 'cells'"):
        write_synthetic(tmp_path / "x", "cell")


def test_write_synthetic_split_sizes(tmp_path):
    from pixelwise.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "c", "cells", n_train=3, n_val=2, size=64, seed=1, n_test=2)
    counts = {split: len(list((root / split / "images").glob("*.png"))) for split in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 2, "test": 2}
    assert len(list((root / "val" / "masks").glob("*.png"))) == 2 and not (root / "test" / "masks").exists()
