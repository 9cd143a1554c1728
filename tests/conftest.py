import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved 3-class U-Net-ResNet18 of depth 3 with random weights (the prediction tests' model)."""
    import pixelwise

    model = pixelwise.create_model(
        "unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], classes=3
    ).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "saved")
