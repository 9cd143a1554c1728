"""The data fingerprint: every number checked against values computed here from the masks and images written here."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import (
    Fingerprint,
    compute_fingerprint,
    read_fingerprint,
    write_fingerprint,
    write_synthetic,
)
from pixelwise.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PIXELWISE_DATA", REPO.parent / "shared" / "data"))
SIDE = 32
rng = np.random.default_rng(0)


def _write_set(root: Path, masks: list[np.ndarray], images: list[np.ndarray] | None = None) -> Path:
    """An unsplit folder data set: ``images/NNN.png`` (noise unless given) and ``masks/NNN.png`` (class ids)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        image = rng.integers(0, 256, mask.shape, dtype=np.uint8) if images is None else images[i]
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{i:03d}.png")
    return root


def _stripes(vertical: bool) -> np.ndarray:
    """Class 1 in the left half (vertical stripes) or the top half (horizontal stripes)."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    if vertical:
        mask[:, : SIDE // 2] = 1
    else:
        mask[: SIDE // 2] = 1
    return mask


def test_class_shares_presence_sizes_and_intensity_match_numpy(tmp_path):
    root = write_synthetic(tmp_path / "shapes", "shapes", n_train=6, n_val=1, size=64)
    fp = compute_fingerprint(root, "train")
    masks = [np.array(Image.open(p)) for p in sorted((root / "train" / "masks").glob("*.png"))]
    images = [np.array(Image.open(p)) / 255 for p in sorted((root / "train" / "images").glob("*.png"))]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=4)
    np.testing.assert_allclose(fp.class_pixels, counts / counts.sum())
    np.testing.assert_allclose(fp.class_presence, [np.mean([(m == c).any() for m in masks]) for c in range(4)])
    assert (fp.images, fp.sampled, fp.channels, fp.bit_depth, fp.num_classes) == (6, 6, 3, 8, 4)
    assert fp.sizes == {"height": {"min": 64, "median": 64, "max": 64}, "width": {"min": 64, "median": 64, "max": 64}}
    pixels = np.concatenate([i.reshape(-1, 3) for i in images])
    np.testing.assert_allclose(fp.intensity["mean"], pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fp.intensity["std"], pixels.std(0), rtol=1e-4)
    # 64x64 images: every pixel is in the percentile sample
    np.testing.assert_allclose(fp.intensity["p0.5"], np.percentile(pixels, 0.5, axis=0), rtol=1e-5)
    np.testing.assert_allclose(fp.intensity["p99.5"], np.percentile(pixels, 99.5, axis=0), rtol=1e-5)
    assert fp.split == "train" and fp.ignored_share == 0


def test_ignored_pixels_are_left_out_of_the_shares(tmp_path):
    masks = [rng.integers(0, 3, (SIDE, SIDE)) for _ in range(3)]
    masks[0][:4] = 255
    masks[1][:, :2] = 255
    fp = compute_fingerprint(_write_set(tmp_path / "d", masks), None)
    stacked = np.stack(masks)
    labelled = stacked[stacked != 255]
    np.testing.assert_allclose(fp.class_pixels, np.bincount(labelled) / labelled.size)
    assert fp.ignored_share == pytest.approx((stacked == 255).mean())


def test_thin_line_has_stroke_width_two_and_a_square_is_thick(tmp_path):
    masks = []
    for shift in range(4):
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + shift : 12 + shift, 4:60] = 1  # a 2-pixel-wide line, 56 long
        mask[30 + shift : 50 + shift, 20:40] = 2  # a filled 20x20 square
        masks.append(mask)
    fp = compute_fingerprint(_write_set(tmp_path / "d", masks), None)
    line, square = fp.objects[1], fp.objects[2]
    assert 1.5 <= line["median_width"] <= 2.5
    assert square["median_width"] > 5 * line["median_width"]
    assert (line["count_per_image"], line["median_area"], line["components"]) == (1, 112, 4)
    assert square["median_area"] == 400 and square["median_extent"] == pytest.approx(20 / 64)
    assert line["median_extent"] == pytest.approx(56 / 64)


def test_class_in_top_halves_only_gives_its_share_as_vertical_asymmetry(tmp_path):
    masks = []
    for _ in range(6):
        mask = np.zeros((SIDE, SIDE), np.uint8)
        mask[: SIDE // 2, :4] = 1  # a quarter of the top half's pixels, half on each side
        mask[: SIDE // 2, -4:] = 1
        masks.append(mask)
    fp = compute_fingerprint(_write_set(tmp_path / "d", masks), None)
    # top: (0.75, 0.25), bottom: (1, 0): total variation 0.25; left and right halves are equal
    assert fp.orientation["vertical_asymmetry"] == pytest.approx(0.25)
    assert fp.orientation["horizontal_asymmetry"] == pytest.approx(0, abs=1e-12)
    assert fp.orientation["classes"][1] == pytest.approx({"top": 0.25, "bottom": 0, "left": 0.125, "right": 0.125})
    # m of the 6 images turned upside down (all 64 patterns): TV = 0.25 |6 - 2m| / 6; at least 0.25 for m = 0, 6
    turned = np.arange(7)
    patterns = np.array([1, 6, 15, 20, 15, 6, 1])
    chance = (patterns * 0.25 * np.abs(6 - 2 * turned) / 6).sum() / 64
    assert fp.orientation["vertical_chance"] == pytest.approx(chance)
    assert fp.orientation["vertical_p"] == pytest.approx(2 / 64)
    assert fp.orientation["horizontal_chance"] == pytest.approx(0, abs=1e-12)


def test_vertically_symmetric_set_has_no_vertical_asymmetry(tmp_path):
    masks = []
    for _ in range(5):
        top = rng.integers(0, 3, (SIDE // 2, SIDE))
        masks.append(np.concatenate([top, top[::-1]]))
    fp = compute_fingerprint(_write_set(tmp_path / "d", masks), None)
    assert fp.orientation["vertical_asymmetry"] == pytest.approx(0, abs=1e-12)
    assert fp.orientation["vertical_p"] == 1  # no pattern of turned images is less asymmetric than 0
    assert fp.orientation["horizontal_asymmetry"] < 0.05  # random left and right halves


@pytest.mark.parametrize("vertical", [True, False])
def test_stripes_are_transpose_asymmetric_and_both_orientations_together_are_not(tmp_path, vertical):
    one = compute_fingerprint(_write_set(tmp_path / "one", [_stripes(vertical)] * 2), None)
    # 8 row bands hold 1/16 of the pixels per class; 4 column bands hold 1/8 of one class each: TV 1/2
    assert one.orientation["transpose_asymmetry"] == pytest.approx(0.5)
    assert one.orientation["horizontal_asymmetry" if vertical else "vertical_asymmetry"] == pytest.approx(1)
    assert one.orientation["vertical_asymmetry" if vertical else "horizontal_asymmetry"] == pytest.approx(0)
    both = compute_fingerprint(_write_set(tmp_path / "both", [_stripes(True), _stripes(False)]), None)
    assert both.orientation["transpose_asymmetry"] == pytest.approx(0, abs=1e-12)


def test_round_trip_through_json_and_file(tmp_path):
    fp = compute_fingerprint(write_synthetic(tmp_path / "cells", "cells", n_train=4, n_val=1, size=64), "train")
    data = fp.to_dict()
    again = Fingerprint.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    write_fingerprint(fp, tmp_path / "run" / "fingerprint.json")
    assert read_fingerprint(tmp_path / "run" / "fingerprint.json").to_dict() == data
    assert len(fp.summary().splitlines()) == 5 + fp.num_classes
    with pytest.raises(DataError, match="lacks images"):
        Fingerprint.from_dict({k: v for k, v in data.items() if k != "images"})


def test_sixteen_bit_images_and_the_sample_size(tmp_path):
    images = [rng.integers(0, 65536, (SIDE, SIDE), dtype=np.uint16) for _ in range(5)]
    masks = [rng.integers(0, 2, (SIDE, SIDE)) for _ in range(5)]
    fp = compute_fingerprint(_write_set(tmp_path / "d", masks, images), None, max_images=3)
    assert fp.bit_depth == 16 and (fp.images, fp.sampled) == (5, 3)
    picked = np.stack([images[0], images[2], images[4]]) / 65535  # evenly spaced, first and last included
    np.testing.assert_allclose(fp.intensity["mean"], [picked.mean()], rtol=1e-5)


def test_bad_inputs_raise_named_errors(tmp_path):
    with pytest.raises(DataError):
        compute_fingerprint(tmp_path / "missing", None)
    masks = [np.zeros((SIDE, SIDE), np.uint8)] * 2
    root = _write_set(tmp_path / "d", masks)
    Image.fromarray(np.zeros((SIDE, SIDE + 1), np.uint8)).save(root / "masks" / "001.png")
    with pytest.raises(DataError, match="size mismatch"):
        compute_fingerprint(root, None)
    with pytest.raises(ConfigError, match="bogus"):
        compute_fingerprint(root, None, layout_options={"bogus": 1})


def test_cli_prints_the_summary_and_the_json(tmp_path, capsys):
    root = write_synthetic(tmp_path / "shapes", "shapes", n_train=3, n_val=1, size=48)
    assert main(["check-data", str(root), "--fingerprint"]) == 0
    assert "orientation" in capsys.readouterr().out
    assert main(["check-data", str(root), "--fingerprint", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == compute_fingerprint(root, "train").to_dict()


@pytest.mark.skipif(not (DATA / "camvid").is_dir() or not (DATA / "isbi2012-em").is_dir(), reason="no shared data")
def test_em_slices_have_no_up_and_down_and_road_scenes_do():
    isbi = compute_fingerprint(DATA / "isbi2012-em", "train", files="[01]?")
    camvid = compute_fingerprint(DATA / "camvid", "train", max_images=60)
    assert isbi.orientation["vertical_asymmetry"] < camvid.orientation["vertical_asymmetry"]
    assert isbi.orientation["transpose_asymmetry"] < camvid.orientation["transpose_asymmetry"]
    assert isbi.mask_offset == [-0.5, 0.0]
    assert camvid.orientation["vertical_p"] < 0.01 < isbi.orientation["vertical_p"]
