"""Commands that never train do not import Lightning (about 2 s of every process start, issue 24).

``pixelwise.fit`` and ``pixelwise.KerasModel`` are imported on first use (PEP 562), the CLI builds its
parser without the training stack, and ``--devices`` imports Lightning Fabric only when it runs. Each check
runs in a fresh interpreter: this test process has long imported Lightning.
"""

import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """The top-level package names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import pixelwise",
        "import pixelwise.inference",
        "from pixelwise.cli import build_parser; build_parser()",
        "from pixelwise.cli import main; main(['models'])",
    ],
)
def test_no_lightning_without_training(code):
    loaded = modules_after(code)
    assert "torch" in loaded  # the check sees imports at all
    assert "lightning" not in loaded


def test_training_names_import_on_first_use():
    loaded = modules_after("import pixelwise; pixelwise.fit; pixelwise.KerasModel")
    assert "lightning" in loaded
    import pixelwise
    from pixelwise.keras_model import KerasModel
    from pixelwise.training.fit import fit

    assert pixelwise.fit is fit and pixelwise.KerasModel is KerasModel
    assert {"fit", "KerasModel"} <= set(dir(pixelwise))
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        pixelwise.fitt  # noqa: B018
