"""The ``labelstudio`` layout: Label Studio's "JSON" export, brush masks in Label Studio's own RLE.

Layout::

    export.json                    a list of tasks (Label Studio: Export → JSON)
    images/3f2a9c1e-cat01.png      the task images (upload names keep or lose the 8-hex prefix)
    config.xml                     (optional) the labelling config: class order and colours

A task looks like this (only the keys read are shown)::

    {"id": 7, "data": {"image": "/data/upload/1/3f2a9c1e-cat01.png"},
     "annotations": [{"was_cancelled": false, "result": [
        {"type": "brushlabels", "original_width": 48, "original_height": 32,
         "value": {"format": "rle", "rle": [0, 0, 23, 0, ...], "brushlabels": ["Cat"]}},
        {"type": "polygonlabels", "original_width": 48, "original_height": 32,
         "value": {"points": [[10.0, 12.5], [60.0, 20.0], [30.0, 80.0]], "polygonlabels": ["Dog"]}}]}]}

``root`` is the JSON file, or a folder holding it. A folder holding several exports has one split per
file (``train.json`` and ``val.json`` → splits ``train`` and ``val``).

Images: the file name of ``data.image`` (``data.<key>`` when the task has no ``image`` key: the first
value naming an image file) without its URL path and query (``/data/local-files/?d=dir/a.png``: the
``d`` path), looked up as written and without the ``abcd1234-`` prefix Label Studio adds on upload,
in the ``images`` option's folder, else in ``images/`` beside the JSON, then the JSON's own folder.

Brush RLE (Label Studio's ``rle-pack`` bit stream, most significant bit first): a 32-bit value count,
5 bits word size − 1, four 4-bit run-length field sizes − 1, then chunks of ``flag`` (1 bit), size
index (2 bits), ``count − 1`` (that many bits): flag 1 repeats one word ``count`` times, flag 0 is
followed by ``count`` literal words. The values are the RGBA bytes of an ``[H, W, 4]`` image; the
mask is its alpha channel. Pixels at least half opaque (alpha > 127, the threshold of the
converter's ``image2rle``) are painted: anti-aliased stroke edges fainter than that are not.

Polygons: ``points`` are percent of the width and height; a pixel is inside when its centre is, by
the even-odd rule (what a scan-line fill gives; a self-crossing polygon has holes).

Classes: with a labelling config (option ``config`` or ``config.xml`` beside the JSON) its
``<Label value=... background=...>`` entries in order, with their colours; otherwise the label
names found in the results, sorted alphabetically (so the ids do not depend on task order).
Class 0 is ``background``; a label named ``background`` (any case) is class 0.

Masks: background 0, then every brush and polygon result painted with its class id in result order,
later results on top (Label Studio draws later regions on top too). Each result is one object of
the instance labels (ids 1..N in result order, later on top). The first non-cancelled annotation of
a task is used (option ``annotation: last`` takes the last one); torchvision and MMSegmentation have
no reader for this format, so these rules are ours.

Tasks nobody labelled (no annotation, or only cancelled ones) are skipped, as unlabelled images, and
counted in a note that ``pixelwise check-data`` prints. Problems (listed by ``pixelwise check-data``,
one per task; they stop training until fixed): an image not found, a result with no label or
several, a label missing from the config, an RLE whose value count is not width × height × 4,
results of one task with different sizes, region types that are not masks (rectangles, ellipses,
key points: convert them in Label Studio or delete them).
Label Studio's "JSON_MIN" and "COCO" exports are not read by this layout (COCO: the ``coco`` layout).
"""

from __future__ import annotations

import functools
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from PIL import Image, ImageColor

from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.layouts.base import Layout, LayoutScan, Record, check_options
from pixelwise.data.readers import IMAGE_SUFFIXES, listing
from pixelwise.errors import DataError, check_choice

NAME = "labelstudio"
TASK_LISTS = ("annotations", "completions")
"""Where a task keeps its annotations: ``annotations``, or ``completions`` in exports before Label Studio 1.0."""
BRUSH = "brushlabels"
POLYGON = "polygonlabels"
NOT_MASKS = ("rectanglelabels", "ellipselabels", "keypointlabels", "rectangle", "ellipse", "keypoint")
"""Region types that cover pixels but are not read: a task holding one is a problem, not a silent hole."""
BACKGROUND = "background"
CONFIG_FILE = "config.xml"
IMAGES_FOLDER = "images"
UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")
"""The prefix Label Studio puts before the name of an uploaded file."""
LOCAL_FILES_QUERY = "d"
"""Query key of the path in Label Studio's local-storage URLs (``/data/local-files/?d=dir/a.png``)."""
PERCENT = 100.0
RGBA = 4
ALPHA = 3
OPAQUE_THRESHOLD = 127
"""Alpha above which a brush pixel is painted (half opaque)."""
COUNT_BITS = 32
WORD_SIZE_BITS = 5
RUN_SIZE_BITS = 4
RUN_SIZE_FIELDS = 4
RUN_INDEX_BITS = 2
BITS_PER_BYTE = 8
PEEK_BYTES = 64
"""Bytes read to tell a JSON list from other JSON files before parsing one."""
ANNOTATION_CHOICES = ("first", "last")
OPTIONS = {
    "images": "folder of the task images (default: images/ beside the JSON, then the JSON's folder)",
    "config": "Label Studio labelling config XML giving the class order and colours (default: config.xml beside it)",
    "annotation": "which non-cancelled annotation of a task to use: first (default) or last",
}
FIX_RLE = "re-export the project from Label Studio (Export → JSON), or delete the damaged region and redraw it"


# ---------------------------------------------------------------- brush RLE


class _BitReader:
    """Reads unsigned integers of any width from a byte string, most significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0
        self.total = len(data) * BITS_PER_BYTE

    def read(self, bits: int) -> int:
        end = self.position + bits
        if end > self.total:
            raise ValueError(f"the bit stream ends {end - self.total} bits early")
        first, last = self.position // BITS_PER_BYTE, -(-end // BITS_PER_BYTE)
        window = int.from_bytes(self.data[first:last], "big")
        self.position = end
        return (window >> (last * BITS_PER_BYTE - end)) & ((1 << bits) - 1)


def _rle_bytes(rle: Sequence[int]) -> bytes:
    try:
        return bytes(rle)
    except (TypeError, ValueError) as error:
        raise ValueError("the rle list must hold whole numbers 0..255 (bytes)") from error


def rle_value_count(rle: Sequence[int]) -> int:
    """The number of values a Label Studio brush RLE declares (its first 32 bits), without decoding it.

    Raises:
        ValueError: the RLE is shorter than its header or is not a list of bytes.
    """
    return _BitReader(_rle_bytes(rle)).read(COUNT_BITS)


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Decode a Label Studio brush RLE (``value.rle`` of a ``brushlabels`` result) into its values.

    Args:
        rle: the bytes of the bit stream, as the list of ints Label Studio writes.

    Shape:
        Returns ``[N]``: ``N = H * W * 4`` for a brush (the RGBA bytes of the image, row by row).

    Returns:
        The values, uint8 / uint16 / uint32 by the stream's word size.

    Raises:
        ValueError: the stream is truncated, runs past its declared count or is not a list of bytes.
    """
    reader = _BitReader(_rle_bytes(rle))
    count = reader.read(COUNT_BITS)
    word = reader.read(WORD_SIZE_BITS) + 1
    run_sizes = [reader.read(RUN_SIZE_BITS) + 1 for _ in range(RUN_SIZE_FIELDS)]
    dtype = np.uint8 if word <= 8 else np.uint16 if word <= 16 else np.uint32
    out = np.zeros(count, dtype)
    i = 0
    while i < count:
        repeat = reader.read(1)
        end = i + 1 + reader.read(run_sizes[reader.read(RUN_INDEX_BITS)])
        if end > count:
            raise ValueError(f"a run reaches value {end} of the {count} declared")
        if repeat:
            out[i:end] = reader.read(word)
        else:
            out[i:end] = [reader.read(word) for _ in range(end - i)]
        i = end
    return out


def brush_mask(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """The ``[H, W]`` bool mask of a brush RLE: its alpha channel, at least half opaque.

    Raises:
        ValueError: the RLE does not decode to ``width * height * 4`` values.
    """
    values = decode_brush_rle(rle)
    if values.size != width * height * RGBA:
        raise ValueError(f"it decodes to {values.size} values, not {width}x{height}x{RGBA} = {width * height * RGBA}")
    return values.reshape(height, width, RGBA)[..., ALPHA] > OPAQUE_THRESHOLD


# ---------------------------------------------------------------- polygons


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fill a polygon (vertices in pixels, ``[V, 2]`` as x, y) by the even-odd rule at pixel centres.

    Returns:
        ``[H, W]`` bool.
    """
    mask = np.zeros((height, width), bool)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for row in range(height):
        centre = row + 0.5
        # half-open test: a vertex on the scan line counts for one of its two edges only
        crossing = (y0 <= centre) != (y1 <= centre)
        if not crossing.any():
            continue
        t = (centre - y0[crossing]) / (y1[crossing] - y0[crossing])
        xs = np.sort(x0[crossing] + t * (x1[crossing] - x0[crossing]))
        # pixel x is inside when x + 0.5 lies in [start, stop): columns ceil(start - 0.5) .. ceil(stop - 0.5) - 1
        starts = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(int)
        stops = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(int)
        for start, stop in zip(starts, stops, strict=True):
            mask[row, start:stop] = True
    return mask


# ---------------------------------------------------------------- masks and instances


@dataclass(frozen=True)
class Region:
    """One brush or polygon result of a task: what to draw and its label."""

    kind: str
    label: str
    data: tuple
    """The RLE bytes (brush) or the vertices in percent, ``((x, y), ...)`` (polygon)."""

    def draw(self, width: int, height: int) -> np.ndarray:
        """The region's ``[H, W]`` bool mask. Raises ValueError for a damaged RLE."""
        if self.kind == BRUSH:
            return brush_mask(self.data, width, height)
        points = np.asarray(self.data, float).reshape(-1, 2) * [width / PERCENT, height / PERCENT]
        return polygon_mask(points, width, height)


@dataclass(frozen=True)
class TaskMask:
    """The mask (and instance labels) of one task, painted from its regions when read.

    Attributes:
        path: the export file (named in messages).
        task: the task id.
        width, height: the image size the results give (``original_width``, ``original_height``).
        regions: the results in order (later on top).
        class_ids: label → class id.
    """

    path: Path
    task: object
    width: int
    height: int
    regions: tuple[Region, ...]
    class_ids: tuple[tuple[str, int], ...]

    def paint(self, values: Iterable[int]) -> np.ndarray:
        out = np.zeros((self.height, self.width), np.int64)
        for region, value in zip(self.regions, values, strict=True):
            try:
                out[region.draw(self.width, self.height)] = value
            except ValueError as error:
                raise DataError(
                    f"task {self.task} of {str(self.path)!r} has a {region.kind} region ({region.label}) that "
                    f"cannot be decoded: {error}; {FIX_RLE}."
                ) from error
        return out

    def read(self, classes: ClassInfo | None, ignore_index: int) -> np.ndarray:
        """Class ids ``int64 [H, W]`` (no void pixels: Label Studio has no ignore label)."""
        ids = dict(self.class_ids)
        return self.paint(ids[region.label] for region in self.regions)


@dataclass(frozen=True)
class TaskInstances:
    """The instance labels of one task: each region one object, ids 1..N in result order."""

    mask: TaskMask

    @property
    def path(self) -> Path:
        return self.mask.path

    def read(self) -> np.ndarray:
        """Instance ids ``int32 [H, W]``, 0 = background."""
        return self.mask.paint(range(1, len(self.mask.regions) + 1)).astype(np.int32)


# ---------------------------------------------------------------- the export file


@functools.lru_cache(maxsize=4)
def _parse(path: str, stamp: tuple[int, int]) -> Any:
    # keyed on (mtime, size) too: detect() and scan() parse a large export once, an edited one again
    data = Path(path).read_bytes()
    return json.loads(data.decode("utf-8-sig"))


def load_export(path: Path) -> Any:
    """The parsed JSON of ``path``.

    Raises:
        DataError: the file cannot be read, is not UTF-8 or is not valid JSON (names the place).
    """
    try:
        stat = path.stat()
        return _parse(str(path), (stat.st_mtime_ns, stat.st_size))
    except OSError as error:
        raise DataError(f"cannot read Label Studio export {str(path)!r}: {error.strerror or error}.") from error
    except UnicodeDecodeError as error:
        raise DataError(
            f"Label Studio export {str(path)!r} is not UTF-8 text; re-export it from Label Studio."
        ) from error
    except json.JSONDecodeError as error:
        raise DataError(
            f"Label Studio export {str(path)!r} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); the file is truncated or edited by hand: re-export it (Export → JSON)."
        ) from error


def _is_task(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("data"), dict) and any(k in item for k in TASK_LISTS)


def is_export(path: Path) -> bool:
    """True when ``path`` is a JSON file holding a list of Label Studio tasks (``data`` + ``annotations``)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(PEEK_BYTES).decode("utf-8-sig", errors="ignore").lstrip()
    except OSError:
        return False
    if not head.startswith("["):  # a COCO file or a config is an object: skip it without parsing
        return False
    try:
        tasks = load_export(path)
    except DataError:
        return False
    return isinstance(tasks, list) and bool(tasks) and _is_task(tasks[0])


def exports(folder: Path) -> list[Path]:
    """The Label Studio exports directly inside ``folder``, by name."""
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".") and is_export(p))


def detect(root: Path) -> bool:
    return is_export(root) if root.is_file() else root.is_dir() and bool(exports(root))


def splits(root: Path, **options: object) -> list[str]:
    """One split per export when a folder holds several (their file stems); none otherwise.

    ``options`` (those of :func:`scan`) do not change the splits; they are accepted and ignored.
    """
    found = exports(root) if root.is_dir() else []
    return [p.stem for p in found] if len(found) > 1 else []


def _export_file(root: Path, split: str | None) -> Path:
    if root.is_file():
        return root
    found = exports(root)
    if split is not None:
        found = [p for p in found if p.stem == split]
    if not found:
        raise DataError(
            f"{str(root)!r} holds no Label Studio JSON export (a .json file holding a list of tasks with 'data' "
            "and 'annotations'); export the project with Export → JSON and put the file there."
        )
    return found[0]


# ---------------------------------------------------------------- images


def image_reference(data: dict) -> str | None:
    """The image URL or path of a task's ``data``: ``image``, else the first value naming an image file."""
    if isinstance(data.get("image"), str):
        return data["image"]
    for value in data.values():
        if isinstance(value, str) and Path(urlsplit(value).path).suffix.lower() in IMAGE_SUFFIXES:
            return value
    return None


def candidate_names(reference: str) -> list[str]:
    """File names an image reference may have on disk: as written, and without the upload prefix."""
    parts = urlsplit(reference)
    path = unquote(parts.path)
    local = parse_qs(parts.query).get(LOCAL_FILES_QUERY)
    if local:  # local-storage URL: the file path is in the query
        path = local[0]
    name = Path(path.replace("\\", "/")).name
    stripped = UPLOAD_PREFIX.sub("", name)
    return [name] if stripped == name or not stripped else [name, stripped]


def image_folders(export: Path, images: object) -> list[Path]:
    """Where the images are looked for.

    Raises:
        DataError: the ``images`` option names a folder that does not exist.
    """
    if images is not None:
        folder = Path(str(images)).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"data option images={str(images)!r} is not a folder; give the folder holding the task images."
            )
        return [folder]
    return [f for f in (export.parent / IMAGES_FOLDER, export.parent) if f.is_dir()]


def find_image(names: Sequence[str], folders: Sequence[Path]) -> Path | None:
    """The first existing ``folder/name``, folders first."""
    for folder in folders:
        for name in names:
            if name and (folder / name).is_file():
                return folder / name
    return None


# ---------------------------------------------------------------- classes


def read_config(path: Path) -> list[tuple[str, tuple[int, int, int] | None]]:
    """The ``<Label value=... background=...>`` entries of a labelling config, in order, without repeats.

    Returns:
        ``(name, colour or None)`` per label; a colour Pillow cannot read (``rgba(...)``) is None.

    Raises:
        DataError: the file cannot be read or is not XML.
    """
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as error:
        raise DataError(
            f"cannot read the Label Studio labelling config {str(path)!r}: {error}; save the project's "
            "Settings → Labeling Interface → Code as that file, or remove it."
        ) from error
    labels: dict[str, tuple[int, int, int] | None] = {}
    for element in tree.iter("Label"):
        name = element.get("value")
        if name is None or name in labels:
            continue
        try:
            labels[name] = ImageColor.getrgb(element.get("background", ""))[:3]
        except ValueError:
            labels[name] = None
    return list(labels.items())


def build_classes(labels: Sequence[tuple[str, tuple[int, int, int] | None]]) -> ClassInfo:
    """Class 0 ``background`` (or the label of that name), then the other labels in order."""
    names = [BACKGROUND] + [name for name, _ in labels if name.lower() != BACKGROUND]
    palette = default_palette(len(names))
    given = {name: color for name, color in labels}
    colors = [palette[0]] + [given.get(name) or palette[k] for k, name in enumerate(names) if k > 0]
    return ClassInfo(names, list(range(len(names))), colors)


def class_id_of(label: str, classes: ClassInfo) -> int | None:
    if label.lower() == BACKGROUND:
        return 0
    return classes.names.index(label) if label in classes.names else None


# ---------------------------------------------------------------- tasks


class TaskProblem(Exception):
    """A task that cannot become a record (the message says why and how to fix it).

    Attributes:
        file: the task's image once found (problems name it, so that ``files=`` selects them), else None.
    """

    file: Path | None = None


class UnlabelledTask(TaskProblem):
    """A task nobody labelled (no annotation, or only cancelled ones): skipped, and counted in the scan's notes."""


def _size(result: dict) -> tuple[int, int]:
    width, height = result.get("original_width"), result.get("original_height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise TaskProblem("a result has no original_width/original_height; re-export it from Label Studio")
    return width, height


def _label(kind: str, value: dict) -> str:
    labels = value.get(kind, value.get("labels"))
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise TaskProblem(
            f"a {kind} result has labels {labels!r}, not exactly one; give each region one label in Label Studio"
        )
    return labels[0]


def parse_region(result: dict) -> tuple[Region, tuple[int, int]] | None:
    """The region and image size of one result; None for results that are not regions (choices, text, ...).

    Raises:
        TaskProblem: a region that cannot be read, or a region type that is not a mask.
    """
    kind = str(result.get("type", "")).lower()
    if kind in NOT_MASKS:
        raise TaskProblem(f"holds a {kind} region, which is not read (brush and polygon regions only); convert it")
    if kind not in (BRUSH, POLYGON):
        return None
    value = result.get("value") if isinstance(result.get("value"), dict) else {}
    label, (width, height) = _label(kind, value), _size(result)
    if kind == POLYGON:
        points = value.get("points")
        if (
            not isinstance(points, list)
            or len(points) < 3
            or any(not isinstance(p, list) or len(p) != 2 for p in points)
        ):
            raise TaskProblem(f"a polygon ({label}) has no list of at least 3 [x, y] points")
        return Region(kind, label, tuple(tuple(float(c) for c in p) for p in points)), (width, height)
    rle = value.get("rle", result.get("rle"))
    try:
        count = rle_value_count(rle)
    except (TypeError, ValueError) as error:
        raise TaskProblem(f"a brush region ({label}) has no readable rle ({error}); {FIX_RLE}") from error
    if count != width * height * RGBA:
        raise TaskProblem(
            f"a brush region ({label}) RLE declares {count} values, not width x height x {RGBA} = "
            f"{width}x{height}x{RGBA} = {width * height * RGBA}; {FIX_RLE}"
        )
    return Region(kind, label, tuple(rle)), (width, height)


def pick_annotation(task: dict, which: str) -> dict:
    """The first (or last) annotation of a task that was not cancelled.

    Raises:
        TaskProblem: the task has none.
    """
    annotations = next((task[k] for k in TASK_LISTS if isinstance(task.get(k), list)), [])
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        why = "only cancelled annotations" if annotations else "no annotations"
        raise UnlabelledTask(f"has {why}")
    return usable[0] if which == "first" else usable[-1]


def parse_regions(annotation: dict) -> tuple[list[Region], tuple[int, int] | None]:
    """The regions of an annotation and the image size they share (None when there are none).

    Raises:
        TaskProblem: a region cannot be read, or two regions give different sizes.
    """
    results = annotation.get("result", [])
    parsed = [parse_region(r) for r in (results if isinstance(results, list) else []) if isinstance(r, dict)]
    parsed = [p for p in parsed if p is not None]
    sizes = {size for _, size in parsed}
    if len(sizes) > 1:
        raise TaskProblem(f"has regions of different image sizes {sorted(sizes)}; re-export it from Label Studio")
    return [region for region, _ in parsed], (sizes.pop() if sizes else None)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise TaskProblem(f"its image cannot be read ({error}); re-export or remove it") from error


def read_task(task: dict, export: Path, folders: Sequence[Path], which: str) -> tuple[Path, list[Region], int, int]:
    """The image, regions and mask size of one task.

    Raises:
        TaskProblem: the image is not found, or the annotation cannot be read.
    """
    reference = image_reference(task["data"])
    if reference is None:
        raise TaskProblem("has no image in its data (an 'image' key, or a value naming an image file)")
    names = candidate_names(reference)
    image = find_image(names, folders)
    if image is None:
        where = ", ".join(str(f) for f in folders) or f"{export.parent / IMAGES_FOLDER} (missing)"
        raise TaskProblem(
            f"its image {reference!r} is not found as {' or '.join(names)} in {where}; copy the images into "
            f"{IMAGES_FOLDER}/ beside the JSON, or pass the data option images: DIR"
        )
    try:
        regions, size = parse_regions(pick_annotation(task, which))
        width, height = size if size is not None else _image_size(image)
    except TaskProblem as problem:
        problem.file = image
        raise
    return image, regions, width, height


@dataclass(frozen=True)
class Task:
    """One usable task of an export."""

    id: object
    image: Path
    regions: list[Region]
    width: int
    height: int


def _task_list(export: Path) -> list[dict]:
    tasks = load_export(export)
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DataError(
            f"{str(export)!r} is not a Label Studio JSON export (a list of task objects); export with Export → JSON."
        )
    # a task without an annotation list is a problem of its own (pick_annotation); without data it is no task
    bad = next((i for i, t in enumerate(tasks) if not isinstance(t.get("data"), dict)), None)
    if bad is not None:
        raise DataError(
            f"task #{bad} of {str(export)!r} has no 'data' object; this layout reads Label "
            "Studio's JSON export (JSON_MIN and CSV exports are not read): export the project with Export → JSON."
        )
    return tasks


def _classes(export: Path, tasks: Sequence[Task], config: object) -> ClassInfo:
    path = Path(str(config)).expanduser() if config is not None else export.parent / CONFIG_FILE
    if config is not None or path.is_file():
        return build_classes(read_config(path))
    return build_classes([(label, None) for label in sorted({r.label for t in tasks for r in t.regions})])


def _records(export: Path, tasks: Sequence[Task], classes: ClassInfo, problems: list[tuple[str, str]]) -> list[Record]:
    records: dict[str, Record] = {}
    for task in tasks:
        unknown = sorted({r.label for r in task.regions if class_id_of(r.label, classes) is None})
        if unknown:
            problems.append(
                (
                    str(task.image),
                    f"task {task.id}: labels {unknown} are not in the labelling config "
                    f"({', '.join(classes.names[1:])}); add them to the config or relabel the regions",
                )
            )
            continue
        if task.image.stem in records:
            problems.append(
                (
                    str(task.image),
                    f"task {task.id}: image {task.image.name} is also the image of an earlier task; "
                    "keep one task per image (delete the duplicate task in Label Studio)",
                )
            )
            continue
        ids = tuple((r.label, class_id_of(r.label, classes)) for r in task.regions)
        mask = TaskMask(export, task.id, task.width, task.height, tuple(task.regions), ids)
        records[task.image.stem] = Record(task.image.stem, task.image, mask, TaskInstances(mask))
    return [records[name] for name in sorted(records)]


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """Read the tasks of a Label Studio JSON export (``root``, or the one in the folder ``root``).

    Raises:
        DataError: no export, an invalid JSON, a missing ``images`` folder, an unreadable config.
        ConfigError: an unknown option, or ``annotation`` not first/last.
    """
    check_options(NAME, options, OPTIONS)
    which = str(options.get("annotation", "first"))
    check_choice("annotation", which, ANNOTATION_CHOICES)
    export = _export_file(root, split)
    folders = image_folders(export, options.get("images"))
    problems: list[tuple[str, str]] = []
    tasks: list[Task] = []
    unlabelled = []
    for index, task in enumerate(_task_list(export)):
        task_id = task.get("id", f"#{index}")
        try:
            tasks.append(Task(task_id, *read_task(task, export, folders, which)))
        except UnlabelledTask:
            unlabelled.append(str(task_id))
        except TaskProblem as problem:
            problems.append((str(problem.file or export), f"task {task_id}: {problem}"))
    classes = _classes(export, tasks, options.get("config"))
    records = _records(export, tasks, classes, problems)
    where = ", ".join(str(f) for f in folders) or "nowhere"
    pairing = f"tasks of {export.name} → data.image by file name (with or without the upload prefix) in {where}"
    notes = [
        f"{len(unlabelled)} tasks without a (non-cancelled) annotation were skipped (ids {listing(unlabelled)}); "
        "label them in Label Studio to use them"
    ]
    scan = LayoutScan(NAME, root, export, split, records, classes, {}, pairing, problems, has_instances=True)
    scan.notes = notes if unlabelled else []
    return scan


LAYOUT = Layout(
    NAME, "Label Studio JSON export (brush RLE and polygon results; images beside it)", detect, splits, scan, OPTIONS
)
