"""Names, options and weight files: unknown names get suggestions, weight files load safely."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import pixelwise
from pixelwise.io import load_weights
from pixelwise.models import TimmEncoder


def test_unknown_architecture_suggests():
    with pytest.raises(pixelwise.ConfigError, match=r"unknown architecture 'unett'; did you mean 'unet'"):
        pixelwise.create_model("unett")


def test_unknown_encoder_suggests():
    with pytest.raises(pixelwise.ConfigError, match=r"unknown encoder 'resnet343'; did you mean 'resnet34'"):
        pixelwise.Unet("resnet343")


def test_unknown_option_suggests():
    with pytest.raises(pixelwise.ConfigError, match=r"no option 'decoder_chanels' \(did you mean 'decoder_channels'"):
        pixelwise.create_model("unet", decoder_chanels=(1, 2))


def test_smp_style_encoder_prefix():
    assert pixelwise.Unet("tu-resnet18").encoder.name == "resnet18"


def test_encoder_depth_out_of_range():
    with pytest.raises(pixelwise.ConfigError, match="encoder_depth=6"):
        pixelwise.Unet("resnet18", encoder_depth=6)


def _encoder_state(encoder: TimmEncoder) -> dict:
    """The encoder's tensors under timm's own key names (feature wrappers may add a prefix)."""
    return {k.removeprefix("model."): v for k, v in encoder.model.state_dict().items()}


def _reference_state(name: str) -> dict:
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_encoder_weights_from_local_file(tmp_path, suffix):
    state = _reference_state("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    encoder = TimmEncoder("resnet18", weights=str(path))
    loaded = _encoder_state(encoder)
    for key in ("conv1.weight", "layer4.1.conv2.weight", "bn1.running_var"):
        assert torch.equal(loaded[key], state[key])


def test_encoder_weights_adapt_first_conv_to_one_channel(tmp_path):
    state = _reference_state("resnet18")
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    encoder = TimmEncoder("resnet18", in_channels=1, weights=str(path))
    first = _encoder_state(encoder)["conv1.weight"]
    assert first.shape[1] == 1
    torch.testing.assert_close(first[:, 0], state["conv1.weight"].sum(1))  # gray = R + G + B filters
    assert torch.equal(_encoder_state(encoder)["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_encoder_weights_adapt_first_conv_to_many_channels(tmp_path):
    state = _reference_state("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    encoder = TimmEncoder("resnet18", in_channels=13, weights=str(path))
    first = _encoder_state(encoder)["conv1.weight"]
    assert first.shape[1] == 13
    # channels repeat the RGB filters, rescaled so the response to a constant image is kept
    torch.testing.assert_close(first[:, 0] * 13 / 3, state["conv1.weight"][:, 0])


def test_weights_file_for_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "r50.safetensors"
    save_file(_reference_state("resnet50"), str(path))
    with pytest.raises(pixelwise.WeightsError, match="does not fit encoder 'resnet18'"):
        TimmEncoder("resnet18", weights=str(path))


def test_missing_weights_path():
    with pytest.raises(pixelwise.ConfigError, match="neither None, 'imagenet' nor an existing file"):
        pixelwise.Unet("resnet18", encoder_weights="/nope/weights.pth")


def test_imagenet_offline_says_how_to_pass_a_file():
    code = (
        "import pixelwise\n"
        "try:\n    pixelwise.Unet('resnet18', encoder_weights='imagenet')\n"
        "except pixelwise.WeightsError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=os.environ.get("HF_HOME", "/tmp/pixelwise-empty-hf-home"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "ERR could not get ImageNet weights for encoder 'resnet18'" in out
    assert "encoder_weights='/path/to/resnet18.safetensors'" in out


def test_tampered_safetensors_is_a_clear_error(tmp_path):
    model = pixelwise.Unet("resnet18", encoder_depth=3)
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")  # header length that cannot be right
    path.write_bytes(bytes(data))
    with pytest.raises(pixelwise.WeightsError, match="not a readable safetensors file"):
        pixelwise.from_pretrained(tmp_path)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    pixelwise.Unet("resnet18", encoder_depth=3).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(pixelwise.WeightsError, match="not a readable safetensors file"):
        pixelwise.from_pretrained(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(pixelwise.WeightsError, match="refusing to load"):
        load_weights(path)
    assert not (tmp_path / "PWNED").exists()


def test_from_pretrained_mismatched_weights(tmp_path):
    pixelwise.Unet("resnet18", classes=2).save_pretrained(tmp_path / "a")
    pixelwise.Unet("resnet18", classes=5).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").replace(tmp_path / "b" / "model.safetensors")
    with pytest.raises(pixelwise.WeightsError, match=r"does not match the model in config\.json"):
        pixelwise.from_pretrained(tmp_path / "b")


def test_from_pretrained_not_a_model_dir(tmp_path):
    with pytest.raises(pixelwise.WeightsError, match=r"config\.json is missing"):
        pixelwise.from_pretrained(tmp_path)


def test_save_pretrained_leaves_no_temporary_files(tmp_path):
    pixelwise.Unet("resnet18", encoder_depth=3).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_refuses_callable_activation(tmp_path):
    model = pixelwise.Unet("resnet18", encoder_depth=3, activation=torch.sigmoid)
    with pytest.raises(pixelwise.ConfigError, match="cannot save option activation"):
        model.save_pretrained(tmp_path)


def test_atomic_writes_get_normal_permissions(tmp_path):
    from pixelwise.io import atomic_path

    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    reference = tmp_path / "b.txt"
    reference.write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode == reference.stat().st_mode
