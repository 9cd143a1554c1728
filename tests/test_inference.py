"""Tiled inference against independent references: MONAI's sliding window, whole-image passes,
one valid-convolution pass over a numpy-mirrored image, convolutions with transformed kernels
(TTA), the unfolded model (BatchNorm folding) and in-memory prediction (streaming TIFFs)."""

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from torch import nn

import pixelwise
from pixelwise.errors import ConfigError, InputSizeError
from pixelwise.inference import (
    NormalizationOptions,
    Predictor,
    RuntimeOptions,
    TilingOptions,
    fold_batchnorm,
    predict_tiff,
)
from pixelwise.inference.stream import TiffSource
from pixelwise.inference.tiling import blend_window, fit_tile, forward_mirrored, mirror_index, scan_axis


def small_net(in_channels: int = 3, classes: int = 4) -> nn.Module:
    """Two 3×3 convolutions (receptive field 5×5: 2 px of context) with BatchNorm in between."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1)
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def softmax_of(fn):
    return lambda x: fn(x).softmax(1)


# -- geometry and windows against MONAI --------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 64), (63, 40), (7, 129)])
def test_blend_window_is_monais_importance_map(shape):
    expected = compute_importance_map(shape, mode="gaussian", sigma_scale=0.125, device="cpu")
    torch.testing.assert_close(blend_window(shape, "gaussian"), expected, rtol=0, atol=1e-7)
    assert torch.equal(blend_window(shape, "none"), torch.ones(shape))


@pytest.mark.parametrize(
    ("size", "tile", "overlap"), [(150, 64, 0.25), (64, 64, 0.5), (1000, 512, 0.25), (65, 64, 0.9)]
)
def test_scan_positions_are_monais(size, tile, overlap):
    step = max(int(tile * (1 - overlap)), 1) if tile != size else tile
    monai_starts = sorted({s[0].start for s in dense_patch_slices((size, size), (tile, tile), (step, step))})
    assert list(scan_axis(size, tile, overlap).starts) == monai_starts


def test_mirror_index_matches_numpy_reflect_pad():
    for size in (1, 2, 3, 7):
        row = np.arange(size)
        for pad in (1, 5, 17):
            expected = np.pad(row, pad, mode="reflect") if size > 1 else np.zeros(size + 2 * pad, int)
            assert np.array_equal(mirror_index(-pad, size + pad, size), expected)


@pytest.mark.parametrize("blend", ["gaussian", "none"])
@pytest.mark.parametrize("size", [(150, 170), (40, 100), (64, 200)])
def test_sliding_window_equals_monai(blend, size):
    net = small_net()
    image = torch.rand(3, *size)
    tiling = TilingOptions(
        tile_size=64, overlap=0.25, blend=blend, batch_size=3, padding_mode="constant", fit_tiles=False
    )
    predictor = Predictor(net, tiling=tiling)
    mode = "gaussian" if blend == "gaussian" else "constant"
    with torch.no_grad():
        expected = sliding_window_inference(image[None], (64, 64), 3, softmax_of(net), overlap=0.25, mode=mode)[0]
    np.testing.assert_allclose(predictor.predict(image), expected.numpy(), rtol=0, atol=1e-5)


def test_fit_tile_never_costs_more_and_keeps_the_overlap():
    for size in (513, 600, 1000, 1024, 2048, 3000, 4096, 5000, 8192):
        for tile, overlap in ((512, 0.25), (256, 0.5), (384, 0.1)):
            side = fit_tile(size, tile, overlap, 32)
            assert tile // 2 <= side <= tile
            fitted, fixed = scan_axis(size, side, overlap), scan_axis(size, tile, overlap)
            assert len(fitted.starts) * -(-side // 32) * 32 <= len(fixed.starts) * -(-tile // 32) * 32
            assert fitted.starts[0] == 0 and fitted.starts[-1] + side == size  # covers the axis
            steps = np.diff(fitted.starts)
            assert (steps <= side - int(side * overlap)).all()  # neighbours overlap by ≥ overlap·side
    # the case it exists for: 1024 px in 512 tiles takes 3 tiles either way; 3 × 416 computes 19 % less
    assert fit_tile(1024, 512, 0.25, 32) == 416
    assert fit_tile(2048, 512, 0.25, 32) == 512  # already tight
    assert fit_tile(400, 512, 0.25, 32) == 512  # shorter than a tile: unchanged


def test_fitted_tiles_change_the_plan_only_for_models_that_state_their_stride():
    model = pixelwise.create_model("unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
    fitted = Predictor(model, tiling=TilingOptions(tile_size=512, overlap=0.25)).plans(1024, 2048)
    assert (fitted[0].tile_in, fitted[1].tile_in) == (416, 512)
    fixed = TilingOptions(tile_size=512, fit_tiles=False)
    assert Predictor(model, tiling=fixed).plans(1024, 1024)[0].tile_in == 512
    tiling = TilingOptions(tile_size=512)
    assert Predictor(small_net(), tiling=tiling).plans(1024, 1024)[0].tile_in == 512  # no input_multiple


# -- tiled equals whole ------------------------------------------------------------------------
@pytest.mark.parametrize("blend", ["gaussian", "linear", "none"])
def test_tiles_with_margin_equal_the_whole_image_pass(blend):
    net = small_net()
    image = torch.rand(3, 150, 170)
    with torch.no_grad():
        whole = net(image[None]).softmax(1)[0].numpy()
    tiled = Predictor(net, tiling=TilingOptions(tile_size=48, overlap=0.25, blend=blend, margin=2)).predict(image)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    # Without the margin, tile edges facing another tile see zero padding instead of the image.
    assert np.abs(Predictor(net, tiling=TilingOptions(tile_size=48, blend=blend)).predict(image) - whole).max() > 1e-3


def test_images_not_larger_than_a_tile_run_whole():
    # A non-local "model": every logit depends on the whole row, so any tiling or padding shows.
    def row_sums(x):
        return torch.cat([x.cumsum(-1), -x.flip(-1).cumsum(-1)], 1)

    image = torch.rand(1, 37, 53)
    expected = row_sums(image[None]).softmax(1)[0].numpy()
    for tile in (53, 64, None):
        tiled = Predictor(row_sums, tiling=TilingOptions(tile_size=tile)).predict(image)
        np.testing.assert_allclose(tiled, expected, atol=1e-6)
    single = torch.rand(1, 1, 1)
    assert Predictor(row_sums, tiling=TilingOptions(tile_size=64)).predict(single).shape == (2, 1, 1)


@pytest.mark.parametrize(
    ("depth", "size", "tile", "tta"),
    [(2, (97, 131), 56, None), (2, (30, 20), 64, None), (2, (61, 61), None, None), (3, (100, 45), 124, "flips")],
)
def test_unet2015_tiles_equal_one_pass_over_the_mirrored_image(depth, size, tile, tta):
    # Depth 3 output tiles (36 px) overlap by 4 px, since their starts must be multiples of 2**3.
    model = pixelwise.UNet2015(in_channels=1, classes=3, base_channels=4, depth=depth).eval()
    image = np.random.default_rng(0).random(size, dtype=np.float32)
    border, (height, width) = model.border(), size
    padded = np.pad(
        image,
        ((border, model.valid_input_size(height + 2 * border) - height - border),
         (border, model.valid_input_size(width + 2 * border) - width - border)),
        mode="reflect",
    )  # fmt: skip
    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    padded_t = torch.from_numpy(padded)[None, None]
    with torch.no_grad():
        expected = torch.stack([model.forward_valid(padded_t.flip(f)).flip(f).softmax(1) for f in flips]).mean(0)
    tiled = Predictor(model, tiling=TilingOptions(tile_size=tile, batch_size=5), tta=tta).predict(image)
    np.testing.assert_allclose(tiled, expected[0, :, :height, :width].numpy(), rtol=0, atol=1e-5)
    if not tta:  # the one-pass function training and evaluation use gives the same scores
        with torch.no_grad():
            whole = forward_mirrored(model, torch.from_numpy(image)[None, None], model).softmax(1)
        np.testing.assert_allclose(whole[0].numpy(), expected[0, :, :height, :width].numpy(), rtol=0, atol=1e-5)


# -- inputs ------------------------------------------------------------------------------------
def test_input_layouts_and_dtypes_agree():
    net = small_net(classes=2)
    predictor = Predictor(net, tiling=TilingOptions(tile_size=32))
    rgb = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    expected = predictor.predict(chw)
    assert expected.shape == (2, 45, 70) and expected.dtype == np.float32
    np.testing.assert_allclose(predictor.predict(rgb), expected, atol=1e-6)
    np.testing.assert_allclose(predictor.predict(rgb.astype(np.uint16) * 257), expected, atol=1e-6)
    labels = predictor.predict_labels(rgb)
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected.argmax(0))
    gray = Predictor(
        small_net(in_channels=1, classes=1),
        tiling=TilingOptions(tile_size=32),
        normalization=NormalizationOptions(mean=[0.5], std=[0.25]),
    )
    gray_image = np.random.default_rng(2).random((33, 40), dtype=np.float32)
    probability = gray.predict(gray_image)
    assert probability.shape == (1, 33, 40)
    assert np.array_equal(gray.predict_labels(gray_image), (probability[0] > 0.5).astype(np.uint8))


def test_channel_mismatch_and_bad_options_are_clear_errors(tmp_path):
    model = pixelwise.create_model("unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8])
    predictor = Predictor(model, tiling=TilingOptions(tile_size=32))
    with pytest.raises(InputSizeError, match=r"the image has 1 channels .* the model expects 3"):
        predictor.predict(np.zeros((20, 20), np.uint8))
    with pytest.raises(ConfigError, match="did you mean 'gaussian'"):
        Predictor(model, tiling=TilingOptions(blend="gausian"))
    with pytest.raises(ConfigError, match="backend='onnxruntime'"):
        Predictor(model, runtime=RuntimeOptions(backend="torch", precision="int8"))
    with pytest.raises(ConfigError, match="overlap"):
        Predictor(model, tiling=TilingOptions(overlap=1.0))
    with pytest.raises(ConfigError, match="margin"):
        tiling = TilingOptions(tile_size=32, overlap=0.1, margin=4)
        Predictor(model, tiling=tiling).predict(np.zeros((80, 80, 3), np.uint8))
    with pytest.raises(ConfigError, match="does not exist"):
        Predictor(tmp_path / "missing")


def test_from_pretrained_uses_the_saved_model(tmp_path):
    model = pixelwise.create_model(
        "unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], classes=3, activation="softmax"
    ).eval()
    model.save_pretrained(tmp_path / "model")
    predictor = Predictor.from_pretrained(tmp_path / "model", tiling=TilingOptions(tile_size=None))
    image = torch.rand(3, 40, 56)
    with torch.no_grad():
        expected = model(image[None])[0].numpy()  # activation="softmax": the model gives probabilities
    np.testing.assert_allclose(predictor.predict(image), expected, atol=1e-4)
    assert predictor.classes.num_classes == 3


def test_bf16_is_close_to_fp32():
    net = small_net()
    image = torch.rand(3, 40, 50)
    fp32 = Predictor(net, tiling=TilingOptions(tile_size=32)).predict(image)
    bf16 = Predictor(net, tiling=TilingOptions(tile_size=32), runtime=RuntimeOptions(precision="bf16")).predict(image)
    assert np.abs(bf16 - fp32).max() < 0.05


# -- test-time augmentation --------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["hflip", "flips", "d4"])
def test_tta_averages_the_kernel_orbit(mode):
    # conv(T⁻¹(f(T x))) is a convolution with the transformed kernel, so TTA of a 3×3 convolution
    # (zero padding is symmetric) is the mean over the transformed kernels: an independent result.
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).eval()
    kernel = conv.weight.detach()
    kernels = [kernel, kernel.flip(-1)] + ([] if mode == "hflip" else [kernel.flip(-2), kernel.flip(-1, -2)])
    if mode == "d4":
        kernels += [k.transpose(-1, -2) for k in kernels]
    image = torch.rand(2, 21, 34)  # not square: a transposition mix-up would not even fit
    expected = torch.stack([F.conv2d(image[None], k, padding=1).softmax(1) for k in kernels]).mean(0)[0]
    np.testing.assert_allclose(Predictor(conv, tta=mode).predict(image), expected.numpy(), atol=1e-6)
    tiled = Predictor(conv, tiling=TilingOptions(tile_size=16, margin=1, overlap=0.5), tta=mode).predict(image)
    np.testing.assert_allclose(tiled, expected.numpy(), atol=1e-6)


# -- BatchNorm folding -------------------------------------------------------------------------
def test_fold_batchnorm_keeps_the_output_of_a_timm_resnet_unet():
    model = pixelwise.create_model("unet", encoder_name="resnet18", classes=3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    folded = fold_batchnorm(model, x[:1, :, :32, :32])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 20  # the original is untouched
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    # Without an example only nn.Sequential pairs (ConvBnAct, downsample) are folded.
    partly = fold_batchnorm(model)
    assert 0 < sum(isinstance(m, nn.BatchNorm2d) for m in partly.modules()) < 20


class _SharedOutput(nn.Module):
    """The convolution's output feeds the BatchNorm and the sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        with torch.no_grad():
            self.bn.running_var.fill_(4.0)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize("inplace", [False, True])
def test_fold_batchnorm_checks_its_result(inplace):
    model, x = _SharedOutput().eval(), torch.rand(1, 2, 9, 9)
    with torch.no_grad():
        expected = model(x)
    with pytest.warns(RuntimeWarning, match="using the unfolded model"):
        result = fold_batchnorm(model, x, inplace=inplace)
    assert isinstance(result.bn, nn.BatchNorm2d) and (result is model) == inplace
    with torch.no_grad():
        torch.testing.assert_close(result(x), expected, rtol=1e-6, atol=1e-6)
    net = small_net()
    with torch.no_grad():
        expected = net(x.repeat(1, 2, 1, 1)[:, :3])
    folded = fold_batchnorm(net, inplace=True)
    assert folded is net and isinstance(net[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(net(x.repeat(1, 2, 1, 1)[:, :3]), expected, rtol=1e-5, atol=1e-5)


# -- streaming ---------------------------------------------------------------------------------
def test_streamed_tiff_equals_in_memory_prediction(tmp_path):
    image = (np.random.default_rng(3).random((700, 900, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(128, 128), compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", image)  # uncompressed: rows read straight from the file
    predictor = Predictor(small_net(classes=3), tiling=TilingOptions(tile_size=128, overlap=0.25, batch_size=4))
    expected_probs = predictor.predict(image)
    expected = predictor.predict_labels(image)
    streamed = predict_tiff(predictor, tmp_path / "tiled.tif", tmp_path / "labels.tif", tmp_path / "probs.npy")
    assert np.array_equal(tifffile.imread(streamed), expected)
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), expected_probs, atol=1e-3)
    predict_tiff(predictor, tmp_path / "strips.tif", tmp_path / "labels2.tif", compression="zlib")
    assert np.array_equal(tifffile.imread(tmp_path / "labels2.tif"), expected)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].shape == (700, 900)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.tif", "labels2.tif", "probs.npy", "strips.tif", "tiled.tif"
    ]  # fmt: skip


@pytest.mark.parametrize("layout", ["planar", "ome_channels", "gray_strips"])
def test_tiff_source_reads_rows_of_every_layout(tmp_path, layout):
    rng = np.random.default_rng(4)
    path = tmp_path / "image.tif"
    if layout == "planar":
        image = rng.integers(0, 65535, (3, 90, 70), dtype=np.uint16)
        tifffile.imwrite(path, image, planarconfig="separate", photometric="rgb", rowsperstrip=16, compression="zlib")
    elif layout == "ome_channels":
        image = rng.integers(0, 255, (2, 90, 70), dtype=np.uint8)
        tifffile.imwrite(path, image, ome=True, metadata={"axes": "CYX"}, tile=(32, 32))
    else:
        image = rng.integers(0, 255, (1, 90, 70), dtype=np.uint8)
        tifffile.imwrite(path, image[0], rowsperstrip=7)
    with TiffSource(path) as source:
        assert source.shape == image.shape
        for y0, y1 in ((0, 90), (5, 6), (31, 77)):
            assert np.array_equal(source.read(y0, y1), image[:, y0:y1])


# -- ONNX Runtime (the export modules are optional extras) ----------------------------------------
def test_onnxruntime_backend_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelwise.inference.export import export_onnx

    model = pixelwise.UNet2015(in_channels=1, classes=2, base_channels=4, depth=2).eval()
    image = np.random.default_rng(5).random((70, 50), dtype=np.float32)
    tiling, onnx = TilingOptions(tile_size=56), RuntimeOptions(backend="onnxruntime")
    expected = Predictor(model, tiling=tiling).predict(image)
    exported = Predictor(model, tiling=tiling, runtime=onnx)
    np.testing.assert_allclose(exported.predict(image), expected, atol=1e-4)
    export_onnx(model, tmp_path / "model.onnx")
    from_file = Predictor(tmp_path / "model.onnx", tiling=tiling, runtime=onnx)
    assert from_file.geometry is not None  # the valid-convolution tiling comes from the file's metadata
    np.testing.assert_allclose(from_file.predict(image), expected, atol=1e-4)
    int8 = RuntimeOptions(backend="onnxruntime", precision="int8")
    quantized = Predictor(tmp_path / "model.onnx", tiling=tiling, runtime=int8)
    probabilities = quantized.predict(image)
    assert probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-5)


def test_grouped_options_and_deprecated_flat_keywords_predict_the_same():
    net = small_net()
    image = torch.rand(3, 70, 90)
    grouped = Predictor(
        net,
        tiling=TilingOptions(tile_size=32, overlap=0.5, blend="linear", batch_size=3, margin=2),
        runtime=RuntimeOptions(device="cpu", channels_last=False),
        normalization=NormalizationOptions(mean=[0.5] * 3, std=[0.25] * 3),
        tta="hflip",
    )
    with pytest.warns(DeprecationWarning, match=r"tiling=TilingOptions\(tile_size=32"):
        flat = Predictor(
            net,
            tile_size=32,
            overlap=0.5,
            blend="linear",
            batch_size=3,
            margin=2,
            device="cpu",
            channels_last=False,
            mean=[0.5] * 3,
            std=[0.25] * 3,
            tta="hflip",
        )
    np.testing.assert_array_equal(grouped.predict(image), flat.predict(image))
    assert flat.tiling == grouped.tiling and flat.runtime == grouped.runtime
    with pytest.warns(DeprecationWarning, match=r"with_progress\(True\)"):
        assert Predictor(net, progress=True).options.progress
    with pytest.raises(TypeError, match="tile_sise"):
        Predictor(net, tile_sise=32)


def test_options_are_checked_in_their_groups_and_with_progress_copies():
    with pytest.raises(ConfigError, match="tile_size=0 is out of range"):
        TilingOptions(tile_size=0)
    with pytest.raises(ConfigError, match="unknown precision option 'fp16'"):
        RuntimeOptions(precision="fp16")
    predictor = Predictor(small_net(), tiling=TilingOptions(tile_size=32))
    shown = predictor.with_progress()
    assert shown.options.progress and not predictor.options.progress
    image = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    np.testing.assert_array_equal(shown.predict(image), predictor.predict(image))
