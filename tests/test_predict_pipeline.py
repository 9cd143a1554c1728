"""Folder prediction as a pipeline (decoding workers, batches of equal-size images, a writer thread):
the same files as predicting one file at a time, failures reported in order, ``--skip-existing``."""

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.errors import ConfigError, DataError
from pixelwise.inference import Predictor, TilingOptions
from pixelwise.inference.files import collect_inputs, predict_file
from pixelwise.inference.pipeline import predict_folder

TILE = 64
SIZES = ((40, 56), (48, 32))
"""Two sizes below the tile: each image is one tile, so equal sizes share a forward pass."""
MULTI_TILE = (90, 100)
"""One image above the tile: tiled on its own."""
IMAGES_PER_SIZE = 6
BATCH = 4


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 small RGB PNGs of two sizes, interleaved by name, one multi-tile image and one corrupt file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2 * IMAGES_PER_SIZE):
        size = SIZES[i % 2]
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (*MULTI_TILE, 3), dtype=np.uint8)).save(folder / "img05b.png")
    (folder / "img03b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def _tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _sequential(tiny_model_dir, images, out, **options):
    """The one-file-at-a-time path: predict_file on each input with single-image forward passes."""
    predictor = Predictor(tiny_model_dir, tiling=TilingOptions(tile_size=TILE, batch_size=1))
    failed = []
    for path in collect_inputs([str(images)])[0]:
        try:
            predict_file(predictor, path, out, **options)
        except DataError:
            failed.append(path.name)
    return failed


def test_pipeline_writes_the_same_files_as_one_image_at_a_time(tiny_model_dir, images, tmp_path):
    failed = _sequential(tiny_model_dir, images, tmp_path / "ref", save_probs=True, overlay=True)
    assert failed == ["img03b.png"]
    predictor = Predictor(tiny_model_dir, tiling=TilingOptions(tile_size=TILE, batch_size=BATCH))
    batches = []
    forward = predictor._tile_scores
    predictor._tile_scores = lambda tiles: batches.append(tuple(tiles.shape)) or forward(tiles)
    inputs = collect_inputs([str(images)])[0]
    out = tmp_path / "out"
    report = predict_folder(predictor, inputs, out, save_probs=True, overlay=True, workers=2)
    assert [(p.name, "cannot read image" in reason) for p, reason in report.failures] == [("img03b.png", True)]
    assert report.predicted == len(inputs) - 1 and report.written == 3 * report.predicted and report.skipped == 0
    # equal sizes shared forward passes: 6 images of each size, 4 at a time → 4, 2 (a lookahead of 16 images)
    whole = sorted(b for b in batches if b[2:] in SIZES)
    assert whole == sorted([(BATCH, 3, *s) for s in SIZES] + [(2, 3, *s) for s in SIZES])
    reference, result = _tree(tmp_path / "ref"), _tree(out)
    assert sorted(result) == sorted(reference) and len(result) == 3 * 13
    assert [name for name in reference if result[name] != reference[name]] == []


def test_a_failure_while_writing_is_reported_in_input_order(tiny_model_dir, images, tmp_path):
    def objects(out, stem, probabilities, **_):
        if stem in ("img01", "img08"):
            raise DataError(f"no objects for {stem}")
        return []

    predictor = Predictor(tiny_model_dir, tiling=TilingOptions(tile_size=TILE, batch_size=BATCH))
    inputs = collect_inputs([str(images)])[0]
    report = predict_folder(predictor, inputs, tmp_path, instances=objects, workers=0)
    assert [(p.name, r) for p, r in report.failures] == [
        ("img01.png", "no objects for img01"),
        ("img03b.png", report.failures[1][1]),
        ("img08.png", "no objects for img08"),
    ]
    assert report.predicted == len(inputs) - 3


def test_cli_skip_existing_predicts_only_inputs_with_missing_outputs(tiny_model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--model", str(tiny_model_dir), str(images), "--out", str(out), "--tile", str(TILE)]
    args += ["--batch-size", str(BATCH), "--workers", "2", "--no-progress", "--save-probs"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "img03b.png" in captured.err and "predicted 13 of 14 images" in captured.out
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert len(before) == 26
    (out / "img04.png").unlink()
    (out / "img07_probs.npy").unlink()
    assert main([*args, "--skip-existing"]) == 1  # the corrupt file is read again, and fails again
    captured = capsys.readouterr()
    assert "predicted 2 of 14 images" in captured.out and "skipped 11 with all outputs present" in captured.out
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert sorted(after) == sorted(before)
    rewritten = sorted(name for name in after if after[name][0] != before[name][0])
    assert rewritten == ["img04.png", "img04_probs.npy", "img07.png", "img07_probs.npy"]
    assert all(after[name][1] == before[name][1] for name in after)


def test_bad_worker_count_is_refused(tiny_model_dir, images, tmp_path, capsys):
    args = ["predict", "--model", str(tiny_model_dir), str(images), "--out", str(tmp_path / "o"), "--workers", "-1"]
    assert main(args) == 2
    assert "--workers -1" in capsys.readouterr().err
    predictor = Predictor(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"workers=1\.5"):
        predict_folder(predictor, [images / "img00.png"], tmp_path, workers=1.5)
