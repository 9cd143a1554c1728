"""GeoTIFF: georeferencing read from the tags, kept by ``predict`` / ``predict_tiff`` outputs, objects as
GeoJSON polygons in map coordinates, nodata pixels ignored in the data set and ``check-data``.

Inputs are written from scratch with tifffile (EPSG:32633, 0.5 m pixels, one tiepoint, nodata 0); expected map
coordinates are computed here from the tiepoint and pixel size; rasterio (GDAL) cross-checks where installed.
"""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import pixelwise
from pixelwise.cli import main
from pixelwise.data import SegmentationFolder
from pixelwise.data.geotiff import geotiff_extratags, pixel_to_map, read_georeference
from pixelwise.errors import DataError
from pixelwise.evaluate import evaluate
from pixelwise.inference import Predictor, TilingOptions
from pixelwise.inference.stream import predict_tiff
from pixelwise.instances.outputs import mask_polygons, write_instance_outputs
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train
from settings import TINY_TRAIN

EPSG = 32633
PIXEL = 0.5
ORIGIN = (500000.0, 5400000.0)  # map (x, y) of the top-left corner of pixel (0, 0)
NAME = "WGS 84 / UTM zone 33N|"
HEIGHT, WIDTH = 40, 48
NODATA_BLOCK = (slice(0, 8), slice(0, 10))


def geo_tags(raster_type: int = 1, keys_count: int | None = None, nodata: str = "0") -> list:
    keys = [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, raster_type, 3072, 0, 1, EPSG, 3073, 34737, len(NAME), 0]
    if keys_count is not None:
        keys[3] = keys_count  # a header that promises more keys than the tag holds
    return [
        (33550, 12, 3, (PIXEL, PIXEL, 0.0), True),
        (33922, 12, 6, (0.0, 0.0, 0.0, *ORIGIN, 0.0), True),
        (34735, 3, len(keys), tuple(keys), True),
        (34737, 2, 0, NAME, True),
        (42113, 2, 0, nodata, True),
    ]


def write_geotiff(path, image=None, **tags):
    """An RGB uint8 GeoTIFF whose ``NODATA_BLOCK`` is 0 in every channel (nodata)."""
    if image is None:
        image = np.random.default_rng(0).integers(1, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        image[NODATA_BLOCK] = 0
    tifffile.imwrite(path, image, photometric="rgb", extratags=geo_tags(**tags))
    return image


def expected_xy(rows, cols):
    return ORIGIN[0] + PIXEL * np.asarray(cols, float), ORIGIN[1] - PIXEL * np.asarray(rows, float)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = pixelwise.create_model(
        "unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], classes=3
    ).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "saved")


def check_georeferenced(path, nodata):
    geo = read_georeference(path)
    assert geo is not None and geo.epsg == EPSG and geo.crs == "EPSG:32633"
    assert geo.transform == (PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    assert geo.nodata == nodata or (np.isnan(nodata) and np.isnan(geo.nodata))
    return geo


def test_read_georeference_parses_the_tags(tmp_path):
    write_geotiff(tmp_path / "a.tif")
    geo = check_georeferenced(tmp_path / "a.tif", 0.0)
    assert geo.pixel_is_area
    x, y = pixel_to_map(geo, np.array([0, 4, 7]), np.array([0, 10, 12]))
    assert np.allclose(x, expected_xy([0, 4, 7], [0, 10, 12])[0]) and np.allclose(y, expected_xy([0, 4, 7], 0)[1])
    assert read_georeference(tmp_path / "none.png") is None
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 4), np.uint8))
    assert read_georeference(tmp_path / "plain.tif") is None


def test_predict_writes_georeferenced_labels_probabilities_and_geojson(model_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    image = write_geotiff(tmp_path / "in" / "scene.tif")
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_dir), str(tmp_path / "in"), "--out", str(out), "--tile", "64"]
    assert main([*args, "--save-probs", "--instances", "--no-progress"]) == 0
    assert {"scene.tif", "scene_probs.tif", "scene.geojson"} <= {p.name for p in out.iterdir()}
    check_georeferenced(out / "scene.tif", 255.0)
    check_georeferenced(out / "scene_probs.tif", float("nan"))
    predictor = Predictor(model_dir, tiling=TilingOptions(tile_size=64))
    expected = predictor.predict_labels(image)
    expected[NODATA_BLOCK] = 255  # nodata input pixels → the ignore label
    assert np.array_equal(tifffile.imread(out / "scene.tif"), expected)
    probs = tifffile.imread(out / "scene_probs.tif")
    assert probs.shape == (3, HEIGHT, WIDTH) and probs.dtype == np.float32
    assert np.isnan(probs[:, NODATA_BLOCK[0], NODATA_BLOCK[1]]).all() and np.isfinite(probs[:, 8:]).all()
    document = json.loads((out / "scene.geojson").read_text())
    assert document["type"] == "FeatureCollection"
    assert document["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    objects = json.loads((out / "scene_objects.json").read_text())["objects"]
    assert [f["properties"]["id"] for f in document["features"]] == [o["id"] for o in objects]
    for feature, record in zip(document["features"], objects, strict=True):
        assert feature["properties"]["area_px"] == record["area"]
        assert polygon_area(feature["geometry"]) == pytest.approx(record["area"] * PIXEL**2)


def polygon_area(geometry):
    """Area of a GeoJSON (Multi)Polygon: outer rings minus holes (shoelace; outer rings counter-clockwise)."""
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    total = 0.0
    for polygon in polygons:
        for ring in polygon:
            xs, ys = np.array(ring).T
            total += 0.5 * np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1])
    return total


def test_geojson_polygon_of_a_known_block(tmp_path):
    write_geotiff(tmp_path / "a.tif")
    geo = read_georeference(tmp_path / "a.tif")
    labels = np.zeros((HEIGHT, WIDTH), np.int32)
    labels[4:7, 10:12] = 1  # 3 rows × 2 columns
    labels[20:30, 20:30] = 2
    labels[23:26, 23:25] = 0  # a hole
    paths = write_instance_outputs(tmp_path / "out", "a", labels, geo=geo, encoding="none")
    features = json.loads(paths["geojson"].read_text())["features"]
    ring = features[0]["geometry"]["coordinates"][0]
    corners = ((4, 10), (7, 10), (7, 12), (4, 12), (4, 10))  # closed, counter-clockwise on the map
    x, y = expected_xy(*zip(*corners, strict=True))
    assert features[0]["geometry"]["type"] == "Polygon" and np.allclose(ring, np.stack([x, y], 1))
    assert features[0]["properties"] == {"id": 1, "class": 1, "class_name": None, "area_px": 6}
    hole = features[1]["geometry"]["coordinates"]
    assert len(hole) == 2 and polygon_area(features[1]["geometry"]) == pytest.approx(94 * PIXEL**2)


@pytest.mark.parametrize("seed", range(4))
def test_mask_polygons_cover_exactly_the_pixels(seed):
    mask = np.random.default_rng(seed).random((12, 14)) < 0.45
    covered = np.zeros(mask.shape, bool)
    centres = [(c + 0.5, r + 0.5) for r in range(mask.shape[0]) for c in range(mask.shape[1])]
    from matplotlib.path import Path as MplPath  # an independent point-in-polygon test

    for rings in mask_polygons(mask):
        inside = MplPath(np.array(rings[0])).contains_points(centres)
        for hole in rings[1:]:
            inside &= ~MplPath(np.array(hole)).contains_points(centres)
        assert not (covered.ravel() & inside).any()  # polygons do not overlap
        covered.ravel()[inside] = True
    assert np.array_equal(covered, mask)


def test_rasterio_reads_the_outputs_at_the_input_place(model_dir, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "scene.tif")
    args = ["predict", "--model", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main([*args, "--save-probs", "--no-progress"]) == 0
    with rasterio.open(tmp_path / "in" / "scene.tif") as source:
        crs, transform = source.crs, source.transform
    assert crs.to_epsg() == EPSG and tuple(transform)[:6] == (PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
    for name, nodata in (("scene.tif", 255), ("scene_probs.tif", None)):
        with rasterio.open(tmp_path / "out" / name) as output:
            assert output.crs == crs and output.transform == transform
            assert output.nodata == nodata or (nodata is None and np.isnan(output.nodata))


def test_pixel_is_point_moves_the_origin_half_a_pixel_as_gdal(tmp_path):
    write_geotiff(tmp_path / "p.tif", raster_type=2)
    geo = read_georeference(tmp_path / "p.tif")
    assert not geo.pixel_is_area and geo.transform[2] == ORIGIN[0] - PIXEL / 2
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(tmp_path / "p.tif") as source:
        assert np.allclose(tuple(source.transform)[:6], geo.transform)


def test_streamed_large_tiff_keeps_the_georeferencing(model_dir, tmp_path, monkeypatch):
    import pixelwise.inference.files

    monkeypatch.setattr(pixelwise.inference.files, "LARGE_IMAGE_PIXELS", 1000)
    (tmp_path / "in").mkdir()
    image = write_geotiff(tmp_path / "in" / "big.tif")
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_dir), str(tmp_path / "in"), "--out", str(out), "--tile", "32"]
    assert main([*args, "--save-probs", "--no-progress"]) == 0
    check_georeferenced(out / "big.tif", 255.0)
    check_georeferenced(out / "big_probs.tif", float("nan"))
    predictor = Predictor(model_dir, tiling=TilingOptions(tile_size=32))
    expected = predictor.predict_labels(image)
    expected[NODATA_BLOCK] = 255
    assert np.array_equal(tifffile.imread(out / "big.tif"), expected)
    whole = predictor.predict(image)
    whole[:, NODATA_BLOCK[0], NODATA_BLOCK[1]] = np.nan
    assert np.allclose(tifffile.imread(out / "big_probs.tif"), whole, atol=1e-5, equal_nan=True)
    assert sorted(p.name for p in out.iterdir()) == ["big.tif", "big_probs.tif"]  # no scratch files left
    predict_tiff(predictor, tmp_path / "in" / "big.tif", tmp_path / "direct.tif", tile=16)
    check_georeferenced(tmp_path / "direct.tif", 255.0)


def test_png_labels_of_a_geotiff_warn_that_they_lose_the_map_position(model_dir, tmp_path):
    from pixelwise.inference.files import predict_file

    write_geotiff(tmp_path / "a.tif")
    predictor = Predictor(model_dir)
    with pytest.warns(UserWarning, match="no map position"):
        written = predict_file(predictor, tmp_path / "a.tif", tmp_path / "out", label_format="png")
    assert written == [tmp_path / "out" / "a.png"]
    assert np.asarray(Image.open(written[0]))[NODATA_BLOCK].tolist() == np.full((8, 10), 255).tolist()


def test_nodata_pixels_are_ignored_by_the_dataset_and_check_data(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    counts = np.zeros(3, np.int64)
    for i in range(3):
        write_geotiff(root / "images" / f"t{i}.tif")
        mask = rng.integers(0, 3, (HEIGHT, WIDTH), dtype=np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"t{i}.png")
        expected = mask.astype(np.int64)
        expected[NODATA_BLOCK] = 255
        item = SegmentationFolder(root, num_classes=3)[i]
        assert np.array_equal(item["mask"].numpy(), expected)
        counts += np.bincount(expected[expected != 255], minlength=3)
    assert main(["check-data", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["pixels"] for c in report["classes"]] == counts.tolist()
    assert report["ignored_pixels"] == 3 * 8 * 10


def test_corrupt_geo_tags_give_a_data_error_naming_the_file(model_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "broken.tif", keys_count=9)
    with pytest.raises(DataError, match=r"broken\.tif.*GeoKeyDirectoryTag.*gdal_translate"):
        read_georeference(tmp_path / "in" / "broken.tif")
    args = ["predict", "--model", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main([*args, "--no-progress"]) == 1
    assert "broken.tif" in capsys.readouterr().err


def test_extratags_copy_the_values_and_set_the_nodata(tmp_path):
    write_geotiff(tmp_path / "a.tif")
    geo = read_georeference(tmp_path / "a.tif")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((4, 4), np.uint8), extratags=geotiff_extratags(geo, 255))
    with tifffile.TiffFile(tmp_path / "a.tif") as a, tifffile.TiffFile(tmp_path / "b.tif") as b:
        for code in (33550, 33922, 34735, 34737):
            assert a.pages[0].tags[code].value == b.pages[0].tags[code].value
        assert b.pages[0].tags[42113].value.strip("\x00") == "255"


def test_train_and_evaluate_on_geotiffs_leave_the_nodata_pixels_out(tmp_path):
    """Two epochs on GeoTIFF images with nodata; evaluate scores exactly the pixels outside the nodata blocks."""
    rng = np.random.default_rng(5)
    val_masks = []
    for split, n in (("train", 4), ("val", 2)):
        for folder in ("images", "masks"):
            (tmp_path / "data" / split / folder).mkdir(parents=True)
        for i in range(n):
            write_geotiff(tmp_path / "data" / split / "images" / f"{split}{i}.tif")
            mask = rng.integers(0, 2, (HEIGHT, WIDTH), dtype=np.uint8)
            Image.fromarray(mask).save(tmp_path / "data" / split / "masks" / f"{split}{i}.png")
            val_masks += [mask] if split == "val" else []
    tiny = TINY_TRAIN | {"crop": 32}
    result = train(TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"), name="geo", **tiny))
    metrics = evaluate(result.run_dir / "model", tmp_path / "data", split="val", progress=False)
    outside = np.ones((HEIGHT, WIDTH), bool)
    outside[NODATA_BLOCK] = False
    scored = np.concatenate([mask[outside] for mask in val_masks])
    assert metrics.support == np.bincount(scored, minlength=2).tolist()  # nodata pixels are not scored
