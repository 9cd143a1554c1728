"""``pixelwise predict --devices N``: the files shared over processes (Lightning Fabric, gloo on the CPU),
every output written once, the same bytes as one process, one summary."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.errors import ConfigError
from pixelwise.inference.distributed import (
    accelerator_for,
    check_launched_world,
    is_distributed,
    merge_reports,
    predict_folder_distributed,
    shard,
)
from pixelwise.inference.pipeline import FolderReport

TILE = 64
SIZES = ((40, 56), (48, 32))
IMAGES = 10
CORRUPT = "img04b.png"
RUN_TIMEOUT_S = 240
"""Two fresh processes import torch and Lightning and start a gloo group: slow on a busy 2-core machine."""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """10 small RGB PNGs of two sizes and one corrupt file among them."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (*SIZES[i % 2], 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    (folder / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def _predict(tiny_model_dir, images, out, *extra):
    """``pixelwise predict`` as a whole process; its CompletedProcess."""
    command = [sys.executable, "-m", "pixelwise.cli", "predict", str(images), "--model", str(tiny_model_dir)]
    command += ["--out", str(out), "--tile", str(TILE), "--batch-size", "1", "--save-probs", "--no-progress"]
    launched = ("WORLD_SIZE", "LOCAL_RANK", "RANK", "MASTER_PORT")  # Fabric then launches and picks a free port
    env = {key: value for key, value in os.environ.items() if key not in launched}
    return subprocess.run(
        [*command, "--device", "cpu", *extra], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env
    )


def test_two_processes_write_every_output_once_as_one_process_does(tiny_model_dir, images, tmp_path):
    single = _predict(tiny_model_dir, images, tmp_path / "one", "--workers", "0")
    shared = _predict(tiny_model_dir, images, tmp_path / "two", "--devices", "2")
    assert single.returncode == 1 and shared.returncode == 1, shared.stderr[-3000:]
    expected = sorted(f"img{i:02d}{suffix}" for i in range(IMAGES) for suffix in (".png", "_probs.npy"))
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == expected  # one label and one probability file each, no temporaries
    assert [name for name in expected if (one / name).read_bytes() != (two / name).read_bytes()] == []
    # one summary, from rank 0, counting each file once: two writers of the same file would count it twice
    summary = f"predicted {IMAGES} of {IMAGES + 1} images into {two} ({2 * IMAGES} files)"
    assert shared.stdout.count("predicted ") == 1 and summary in shared.stdout
    assert [line for line in shared.stderr.splitlines() if line.startswith(f"  {images / CORRUPT}:")] == [
        line for line in single.stderr.splitlines() if CORRUPT in line
    ]  # the corrupt input reported once, with the reason one process gives
    assert shared.stderr.count("input failed:") == 1 and "1 input failed:" in shared.stderr
    assert "GLOBAL_RANK: 1" in shared.stderr  # the second process was a real member of the process group


def test_zero_devices_is_refused_before_any_work(tiny_model_dir, images, tmp_path, capsys):
    args = ["predict", "--model", str(tiny_model_dir), str(images), "--out", str(tmp_path / "o"), "--devices", "0"]
    assert main(args) == 2
    assert "--devices 0 is out of range; give an int ≥ 1" in capsys.readouterr().err
    assert main([*args[:-2], "--num-nodes", "-1"]) == 2
    assert "--num-nodes -1 is out of range" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^devices=0 is out of range"):
        predict_folder_distributed(lambda device: None, [], tmp_path, devices=0)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_one_gpu_index_with_several_processes_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the message, on a machine without GPUs too
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device 'cuda:1' names one device.*--device cuda"):
        accelerator_for("cuda:1")
    assert accelerator_for(None) == "auto" and accelerator_for("cpu") == "cpu"


def test_shards_cover_the_inputs_once_and_failures_merge_in_input_order():
    inputs = [Path(f"f{i}.png") for i in range(7)]
    shards = [shard(inputs, rank, 3) for rank in range(3)]
    assert shards == [inputs[0:7:3], inputs[1:7:3], inputs[2:7:3]]
    assert sorted(p for s in shards for p in s) == sorted(inputs)
    reports = [
        FolderReport(predicted=2, written=4, failures=[(inputs[3], "bad 3")]),
        FolderReport(predicted=1, written=2, skipped=1, failures=[(inputs[4], "bad 4"), (inputs[1], "bad 1")][::-1]),
        FolderReport(predicted=1, written=2, failures=[(inputs[2], "bad 2")]),
    ]
    merged = merge_reports(reports, inputs)
    assert (merged.predicted, merged.written, merged.skipped, merged.processes) == (4, 8, 1, 3)
    assert [re.sub(r"\D", "", p.name) for p, _ in merged.failures] == ["1", "2", "3", "4"]
    assert [reason for _, reason in merged.failures] == ["bad 1", "bad 2", "bad 3", "bad 4"]


def test_under_torchrun_the_options_must_match_its_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    check_launched_world(4, 2)
    with pytest.raises(ConfigError, match=r"--devices 1 × --num-nodes 1 = 1 processes.*started 8.*--nproc-per-node"):
        check_launched_world(1, 1)
    assert is_distributed(1, 1)  # a torchrun process shares the files even with the default --devices
    monkeypatch.delenv("WORLD_SIZE")
    assert not is_distributed(1, 1) and is_distributed(1, 2)
