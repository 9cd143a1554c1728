"""The ``labelstudio`` layout: a Label Studio JSON export with brush RLE and polygon results.

The brush RLEs are written by an encoder in this file, written from the format's description
(``rle-pack``: 32-bit count, 5-bit word size - 1, four 4-bit run-field sizes - 1, then chunks of
flag / size index / count - 1 / words, most significant bit first), never by the code under test;
the expected masks are painted here with numpy.
"""

import json

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import SegmentationFolder
from pixelwise.data.layouts import detect_layout, open_layout
from pixelwise.data.layouts.labelstudio import decode_brush_rle
from pixelwise.errors import ConfigError, DataError
from settings import TINY_TRAIN

H, W = 32, 48
RUN_SIZES = (3, 5, 9, 16)
"""Run-field sizes of our encoder; not Label Studio's default (3, 4, 8, 16), so the header is read, not assumed."""
STEMS = ("cat01", "cat02", "cat03", "cat04")
PREFIXES = ("3f2a9c1e", "0badf00d", "deadbeef", "12ab34cd")


# ---------------------------------------------------------------- an independent encoder


def _bits(value: int, width: int) -> str:
    assert 0 <= value < 2**width
    return format(value, f"0{width}b")


def _chunk(flag: int, count: int, words: list[int], word_size: int) -> str:
    index = next(i for i, size in enumerate(RUN_SIZES) if count - 1 < 2**size)
    return "".join(
        [str(flag), _bits(index, 2), _bits(count - 1, RUN_SIZES[index])] + [_bits(w, word_size) for w in words]
    )


def encode(values: np.ndarray, word_size: int = 8) -> list[int]:
    """Label Studio brush RLE of ``values``: repeats for runs of 2+, literal chunks for the single values between."""
    values = [int(v) for v in values]
    out = [_bits(len(values), 32), _bits(word_size - 1, 5)] + [_bits(s - 1, 4) for s in RUN_SIZES]
    longest, i, literal = 2 ** RUN_SIZES[-1], 0, []
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i] and j - i < longest:
            j += 1
        if j - i == 1:
            literal.append(values[i])
        if literal and (j - i > 1 or len(literal) == longest or j == len(values)):
            out.append(_chunk(0, len(literal), literal, word_size))
            literal = []
        if j - i > 1:
            out.append(_chunk(1, j - i, [values[i]], word_size))
        i = j
    stream = "".join(out)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k : k + 8], 2) for k in range(0, len(stream), 8)]


def rgba(mask: np.ndarray, color: tuple[int, int, int], faint: np.ndarray | None = None) -> np.ndarray:
    """The flattened RGBA bytes Label Studio stores: colour and alpha 255 where painted, alpha 100 where faint."""
    image = np.zeros((*mask.shape, 4), np.uint8)
    image[mask] = (*color, 255)
    if faint is not None:
        image[faint & ~mask] = (*color, 100)
    image[mask, 0] = np.arange(mask.sum()) % 7  # varying red: literal chunks as well as repeats
    return image.ravel()


# ---------------------------------------------------------------- the data set


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def inside(points_px: np.ndarray) -> np.ndarray:
    """Even-odd rule at pixel centres, by counting crossings of a ray to the right from every centre."""
    yy, xx = np.mgrid[:H, :W] + 0.5
    x0, y0 = points_px[:, 0], points_px[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    py, px = yy[..., None], xx[..., None]
    spans = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return (spans & (px < cross_x)).sum(-1) % 2 == 1


def brush(label: str, mask: np.ndarray, faint: np.ndarray | None = None) -> dict:
    color = (255, 0, 0) if label == "Cat" else (0, 0, 255)
    value = {"format": "rle", "rle": encode(rgba(mask, color, faint)), "brushlabels": [label]}
    return {"type": "brushlabels", "value": value, "original_width": W, "original_height": H,
            "from_name": "tag", "to_name": "image", "id": f"r{mask.sum()}"}  # fmt: skip


def polygon(label: str, points_pct: list[list[float]]) -> dict:
    value = {"points": points_pct, "polygonlabels": [label], "closed": True}
    return {"type": "polygonlabels", "value": value, "original_width": W, "original_height": H,
            "from_name": "poly", "to_name": "image"}  # fmt: skip


POLY = [[10.3, 60.2], [45.1, 95.7], [80.6, 58.9], [52.2, 72.4]]
"""A concave quadrilateral, in percent; no vertex on a pixel centre."""


def regions(i: int) -> list[tuple[dict, np.ndarray, str]]:
    """Results of task ``i`` with the mask each paints (later on top) and its label."""
    cat = disc(10 + i, 14 + 2 * i, 7)
    dog = disc(14, 20 + 2 * i, 6)  # overlaps the cat: the dog is later, so on top
    faint = disc(10 + i, 14 + 2 * i, 9)  # anti-aliased rim below half opacity: not painted
    poly_px = np.array(POLY) * [W / 100, H / 100]
    return [
        (brush("Cat", cat, faint), cat, "Cat"),
        (brush("Dog", dog), dog, "Dog"),
        (polygon("Cat", POLY), inside(poly_px), "Cat"),
    ]


def expected(i: int, ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    mask, objects = np.zeros((H, W), np.int64), np.zeros((H, W), np.int32)
    for k, (_, painted, label) in enumerate(regions(i), start=1):
        mask[painted], objects[painted] = ids[label], k
    return mask, objects


def make_export(root, n: int = len(STEMS)) -> list[dict]:
    """``root/export.json`` + ``root/images/``: uploaded names ``PREFIX-STEM.png``; task 1's file lost its prefix."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    tasks = []
    for i in range(n):
        upload = f"{PREFIXES[i]}-{STEMS[i]}.png"
        on_disk = f"{STEMS[i]}.png" if i == 1 else upload
        mask, _ = expected(i, {"Cat": 1, "Dog": 2})
        pixels = (rng.integers(0, 60, (H, W, 3)) + mask[..., None] * 80).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / on_disk)
        result = [r for r, _, _ in regions(i)]
        annotations = [
            {"id": 100 + i, "was_cancelled": True, "result": []},  # skipped: cancelled
            {"id": 200 + i, "was_cancelled": False, "result": result, "completed_by": 1},
        ]
        tasks.append({"id": i + 1, "data": {"image": f"/data/upload/1/{upload}"}, "annotations": annotations})
    (root / "export.json").write_text(json.dumps(tasks))
    return tasks


# ---------------------------------------------------------------- tests


def test_decoder_reads_what_an_independent_encoder_writes():
    rng = np.random.default_rng(1)
    for size in (1, 7, 300, 70000):  # 70000: a run longer than the widest run field (2**16)
        values = np.repeat(rng.integers(0, 4, size // 3 + 1), rng.integers(1, 6, size // 3 + 1))[:size]
        values[: size - 10] = 0 if size > 2**16 else values[: size - 10]  # one run longer than 2**16 values
        assert np.array_equal(decode_brush_rle(encode(values)), values.astype(np.uint8))
    wide = rng.integers(0, 2**12, 500)
    assert np.array_equal(decode_brush_rle(encode(wide, word_size=12)), wide)


def test_decoder_agrees_with_label_studio_converter():
    brush_module = pytest.importorskip("label_studio_converter.brush")
    values = rgba(disc(12, 20, 8), (10, 200, 30), disc(12, 20, 10))
    assert np.array_equal(decode_brush_rle(brush_module.encode_rle(values)), values)
    assert np.array_equal(brush_module.decode_rle(encode(values)), values)


def test_export_is_detected_and_gives_the_painted_masks(tmp_path):
    make_export(tmp_path)
    assert detect_layout(tmp_path).name == "labelstudio"
    assert detect_layout(tmp_path / "export.json").name == "labelstudio"
    data = SegmentationFolder(tmp_path / "export.json", instances=True)
    assert data.classes.names == ["background", "Cat", "Dog"]
    assert [r.name for r in data.records] == sorted(f"{PREFIXES[i]}-{s}" if i != 1 else s for i, s in enumerate(STEMS))
    by_name = {r.name: k for k, r in enumerate(data.records)}
    for i, stem in enumerate(STEMS):
        item = data[by_name[f"{PREFIXES[i]}-{stem}" if i != 1 else stem]]
        mask, objects = expected(i, {"Cat": 1, "Dog": 2})
        assert np.array_equal(item["mask"].numpy(), mask)
        assert np.array_equal(item["instances"].numpy(), objects)
        assert set(np.unique(mask)) == {0, 1, 2}


def test_config_xml_gives_class_order_and_colours(tmp_path):
    make_export(tmp_path, n=1)
    (tmp_path / "config.xml").write_text(
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="Dog" background="#00FF00"/><Label value="Cat" background="blue"/></BrushLabels>'
        '<PolygonLabels name="poly" toName="image"><Label value="Cat" background="red"/></PolygonLabels></View>'
    )
    data = SegmentationFolder(tmp_path)
    assert data.classes.names == ["background", "Dog", "Cat"]
    assert data.classes.colors[1:] == [(0, 255, 0), (0, 0, 255)]
    assert np.array_equal(data[0]["mask"].numpy(), expected(0, {"Cat": 2, "Dog": 1})[0])


def test_the_first_non_cancelled_annotation_is_used_unless_last_is_asked(tmp_path):
    tasks = make_export(tmp_path, n=1)
    later = regions(0)[1]  # a second annotation holding only the dog
    tasks[0]["annotations"].append({"id": 300, "was_cancelled": False, "result": [later[0]]})
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    first = SegmentationFolder(tmp_path).read_mask(0)
    last = SegmentationFolder(tmp_path, layout_options={"annotation": "last"})
    assert np.array_equal(first, expected(0, {"Cat": 1, "Dog": 2})[0])
    assert last.classes.names == ["background", "Dog"]  # classes: the labels of the annotations used
    assert np.array_equal(last.read_mask(0), later[1].astype(np.int64))


def test_check_data_counts_match_bincount(tmp_path, capsys):
    make_export(tmp_path)
    assert main(["check-data", str(tmp_path), "--json"]) in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "labelstudio"
    truth = sum(np.bincount(expected(i, {"Cat": 1, "Dog": 2})[0].ravel(), minlength=3) for i in range(len(STEMS)))
    assert [c["pixels"] for c in report["classes"]] == truth.tolist()
    assert [c["name"] for c in report["classes"]] == ["background", "Cat", "Dog"]
    assert report["ignored_pixels"] == 0 and report["problems"] == []


def test_bad_tasks_are_problems_naming_the_task_and_the_fix(tmp_path):
    tasks = make_export(tmp_path)
    tasks[0]["data"]["image"] = "/data/upload/1/ffffffff-gone.png"
    tasks[2]["annotations"][1]["result"][0]["original_width"] = W + 1  # RLE length no longer W x H x 4
    tasks[3]["annotations"] = []
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    scan = open_layout(tmp_path)
    assert [r.name for r in scan.records] == ["cat02"]
    messages = "\n".join(m for _, m in scan.problems)
    assert (
        "task 1: its image '/data/upload/1/ffffffff-gone.png' is not found as ffffffff-gone.png or gone.png" in messages
    )
    assert "images: DIR" in messages
    assert "task 3: " in messages and f"{(W + 1) * H * 4}" in messages and "re-export" in messages
    assert "task 4" not in messages  # unlabelled: skipped, and counted in a note instead of a problem
    assert scan.notes == [
        "1 tasks without a (non-cancelled) annotation were skipped (ids 4); label them in Label Studio to use them"
    ]
    with pytest.raises(DataError, match="do not pair up"):
        SegmentationFolder(tmp_path)


def test_unlabelled_tasks_are_skipped_and_noted_without_stopping_training(tmp_path, capsys):
    tasks = make_export(tmp_path)
    tasks[3]["annotations"] = [dict(tasks[3]["annotations"][0], was_cancelled=True)]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    data = SegmentationFolder(tmp_path)
    assert len(data) == len(tasks) - 1
    main(["check-data", str(tmp_path)])
    assert "note: 1 tasks without a (non-cancelled) annotation were skipped (ids 4)" in capsys.readouterr().out


def test_invalid_json_and_options_are_named(tmp_path):
    make_export(tmp_path, n=1)
    with pytest.raises(ConfigError, match="annotation"):
        open_layout(tmp_path, options={"annotation": "middle"})
    with pytest.raises(ConfigError, match="takes annotation, config, images"):
        open_layout(tmp_path, options={"overlap": "later"})
    with pytest.raises(DataError, match=r"images=.*is not a folder"):
        open_layout(tmp_path, options={"images": str(tmp_path / "nope")})
    broken = tmp_path / "export.json"
    broken.write_text(broken.read_text()[:-40])
    with pytest.raises(DataError, match=r"export\.json.*is not valid JSON.*re-export"):
        open_layout(broken, format="labelstudio")


def test_train_and_evaluate_on_the_export(tmp_path):
    from pixelwise.evaluate import evaluate
    from pixelwise.training.config import TrainConfig
    from pixelwise.training.run import train

    make_export(tmp_path / "data")
    config = TrainConfig(
        data=str(tmp_path / "data"), train_split=None, val_split=None, train_files="*cat0[123]",
        val_files="*cat04", runs_dir=str(tmp_path / "runs"), name="ls", **TINY_TRAIN | {"crop": 32},
    )  # fmt: skip
    train(config)
    metrics = evaluate(tmp_path / "runs" / "ls", tmp_path / "data", split=None, files="*cat04",
                       out_dir=tmp_path / "eval", progress=False)  # fmt: skip
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    assert truth.tolist() == np.bincount(expected(3, {"Cat": 1, "Dog": 2})[0].ravel(), minlength=3).tolist()
