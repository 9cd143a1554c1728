"""The command line: help, models table, info, bench and its errors."""

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

import pixelwise
import pixelwise.cli
from pixelwise.cli import main
from pixelwise.models import list_models, register_model


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "info", "bench"):
        assert command in out


def test_a_plugin_that_fails_to_import_leaves_the_other_commands(monkeypatch, capsys):
    broken = EntryPoint("broken", "no_such_module_xyz.cli:add_parser", pixelwise.cli.PLUGIN_GROUP)
    monkeypatch.setattr(pixelwise.cli, "entry_points", lambda group: [broken] if group == "pixelwise.commands" else [])
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "models" in captured.out and "broken" not in captured.out
    [line] = captured.err.splitlines()  # one line naming the plugin and the error
    assert "'broken'" in line and "no_such_module_xyz" in line and "ModuleNotFoundError" in line
    assert main(["models"]) == 0


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "pixelwise.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"pixelwise {pixelwise.__version__}"


def test_models_table_lists_every_architecture(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(list_models()) <= rows
    assert "decoder_upsampling='nearest'" in out and "base_channels=64" in out


def test_models_encoders_pattern(capsys):
    assert main(["models", "--encoders", "resnet1*"]) == 0
    names = capsys.readouterr().out.split()
    assert "resnet18" in names and all(n.startswith("resnet1") for n in names)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "timm" in out and "torch threads" in out and "device" in out


def test_bench_runs_a_model(capsys):
    assert main(["bench", "--model", "unet", "--encoder", "resnet18", "--size", "33x47", "--runs", "1"]) == 0
    assert "output=[1, 2, 33, 47]" in capsys.readouterr().out


def test_bench_unknown_model_is_a_short_error(capsys):
    assert main(["bench", "--model", "unett"]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'unett'; did you mean 'unet'" in err and "Traceback" not in err


def test_bench_bad_size(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--size", "axb"])
    assert "--size 'axb': give N or HxW" in capsys.readouterr().err


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_model("unet")(type("Another", (pixelwise.SegmentationModel,), {}))
