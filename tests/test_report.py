"""The static HTML report: its tables, escaping and pictures, read as HTML and rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from pixelwise import viz
from pixelwise.errors import ConfigError
from pixelwise.report import MISSING, MISSING_NOTE, write_report

NAMES = ["sky", "building", "<b>car&bus</b>", "road", "sign"]
K = len(NAMES)
ABSENT = 4  # the class with NaN metrics
CHROMIUM_TIMEOUT_S = 60
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    "--hide-scrollbars",
]


class _Page(HTMLParser):
    """Collects each table (by id) as rows of cell texts, the images' attributes, and the body's attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict[str, list[list[str]]]] = {}
        self.images: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self.title = ""
        self._table: str | None = None
        self._part = "tbody"
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = {"thead": [], "tbody": []}
        elif tag in ("thead", "tbody"):
            self._part = tag
        elif tag == "tr" and self._table is not None:
            self.tables[self._table][self._part].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "body":
            self.body = attrs
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][self._part][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _figures(curves: Path, confusion: Path) -> None:
    """Training curves and a confusion matrix as PNGs (plain pictures where matplotlib is missing)."""
    matrix = np.diag([50, 40, 30, 20, 0]) + 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        viz.save_png(np.linspace(0, 255, 64 * 96, dtype=np.uint8).reshape(64, 96), curves)
        viz.save_png(np.repeat(matrix.astype(np.uint8), 8, axis=0).repeat(8, axis=1), confusion)
        return
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_miou": 1 - 1 / e, "val_miou": 0.9 - 1 / e}
        for e in range(1, 6)
    ]
    viz.plot_curves(rows, curves)
    viz.plot_confusion(matrix, NAMES, confusion)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report whose curves and one panel live outside its folder, with an escaped name and a NaN class."""
    root = tmp_path_factory.mktemp("report")
    out, elsewhere = root / "eval", root / "elsewhere"
    curves, confusion = elsewhere / "curves.png", out / "confusion.png"
    _figures(curves, confusion)
    palette = viz.default_palette(K)
    rng = np.random.default_rng(0)
    gallery = []
    for i, (folder, name) in enumerate([(out / "gallery", "frame 01.png"), (elsewhere, "a&b <2>.png")]):
        target = rng.integers(0, K - 1, (24, 32))
        prediction = np.where(rng.random((24, 32)) < 0.2, (target + 1) % (K - 1), target)
        viz.save_png(viz.panel(rng.random((3, 24, 32)), target, prediction, palette), folder / name)
        gallery.append({"name": name, "panel": folder / name, "iou": [0.5, None][i]})
    nan = math.nan
    metrics = {
        "mean_iou": 0.61234,
        "mean_f1": 0.7,
        "accuracy": 0.9,
        "mean_accuracy": 0.75,
        "fw_iou": nan,
        "iou": [0.9, 0.51234, 0.25, 0.8, nan],
        "f1": [0.95, 0.6, 0.4, 0.89, nan],
        "precision": [0.96, 0.7, 0.5, 0.9, nan],
        "recall": [0.94, 0.5, 0.3, 0.88, nan],
        "support": [12000, 3400, 560, 78000, 0],
    }
    return write_report(
        out,
        title="unet <test> & co",
        metrics=metrics,
        class_names=NAMES,
        palette=palette,
        curves_png=curves,
        confusion_png=confusion,
        gallery=gallery,
        config={"model": {"arch": "unet"}, "note": "<script>alert(1)</script>", "path": Path("/data")},
        notes=["pixelwise evaluate --weights best.safetensors", "<i>not italic</i>"],
    )


EXPECTED_IMAGES = 4  # curves, confusion matrix, two gallery panels


def test_report_tables_escaping_and_pictures(report):
    out = report.parent
    assert report.name == "report.html"
    assert not list(out.glob(".*.tmp")), "atomic writes left a temporary file behind"
    text = report.read_text(encoding="utf-8")
    page = _parse(text)
    assert page.title == "unet <test> & co"
    assert "<script" not in text and "<b>car" not in text and "<i>not" not in text, "text was not escaped"
    assert "http://" not in text and "https://" not in text, "the page must not reach the network"

    summary = page.tables["summary"]["tbody"]
    assert summary[0] == [
        "0.612mean IoU",
        "0.700mean F1",
        "0.900pixel accuracy",
        "0.750mean class accuracy",
        f"{MISSING}frequency-weighted IoU",
    ]

    table = page.tables["per-class"]
    assert table["thead"][0] == ["", "class", "IoU", "F1", "precision", "recall", "support"]
    rows = table["tbody"]
    assert len(rows) == K
    assert [row[1] for row in rows] == NAMES
    assert rows[1] == ["", "building", "0.512", "0.600", "0.700", "0.500", "3,400"]
    assert rows[3][-1] == "78,000"
    assert rows[ABSENT][2:6] == [MISSING] * 4
    assert MISSING_NOTE in text

    assert len(page.images) == EXPECTED_IMAGES
    for image in page.images:
        assert image["alt"], f"image {image['src']} has no alt text"
        src = image["src"]
        assert not urlsplit(src).scheme and not src.startswith("/"), f"{src} is not a relative path"
        path = (out / unquote(src)).resolve()
        assert path.is_file(), f"{src} does not resolve to a file"
        assert path.is_relative_to(out.resolve()), f"{src} lies outside the report's folder"
    sources = {unquote(image["src"]) for image in page.images}
    assert sources == {"curves.png", "confusion.png", "gallery/frame 01.png", "gallery/a&b <2>.png"}


def test_report_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"metrics\['iou'\] has 2 entries but there are 3 class names"):
        write_report(tmp_path, title="t", metrics={"iou": [0.1, 0.2]}, class_names=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        write_report(tmp_path, title="t", metrics={}, class_names=["a"], curves_png=tmp_path / "missing.png")
    assert not (tmp_path / "report.html").exists()


# ----------------------------------------------------------------------------------------------------------------
# in a browser

CHECK_IMAGES = """
<img id="control" src="does-not-exist.png" alt="">
<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.broken = JSON.stringify(
    images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.getAttribute("src")));
});
</script>
"""


def _chromium(*args: str, user_data: Path) -> str:
    result = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *args],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed; .ci/run installs Debian's chromium"
)
def test_report_renders_in_chromium(report, tmp_path):
    user_data = tmp_path / "chromium-profile"

    dom = _parse(_chromium("--dump-dom", report.as_uri(), user_data=user_data))
    assert len(dom.tables["per-class"]["tbody"]) == K
    assert [row[1] for row in dom.tables["per-class"]["tbody"]] == NAMES
    assert len(dom.tables["summary"]["tbody"][0]) == 5

    # A test-only copy of the page, next to it so that relative paths hold, with a script that lists the
    # images that failed to load, and one image that must fail (so that the check itself is checked).
    harness = report.with_name("report-check.html")
    harness.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_IMAGES + "</body>"), "utf-8")
    try:
        body = _parse(_chromium("--virtual-time-budget=5000", "--dump-dom", harness.as_uri(), user_data=user_data)).body
    finally:
        harness.unlink()
    assert "data-broken" in body, "the page's load event never fired"
    assert json.loads(body["data-broken"]) == ["does-not-exist.png"], "some images did not load"
    assert int(body["data-images"]) == EXPECTED_IMAGES + 1

    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri(), user_data=user_data)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 10, "the screenshot is blank"
