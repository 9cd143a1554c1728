"""The ``pixelwise`` command line: ``pixelwise --help`` lists the commands."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Sequence

from pixelwise.errors import PixelwiseError
from pixelwise.inference.tta import TTA_MODES

COMMON_OPTIONS = {
    "encoder_name",
    "encoder_depth",
    "encoder_weights",
    "encoder_freeze",
    "in_channels",
    "classes",
    "activation",
}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_models(args: argparse.Namespace) -> int:
    """Print the architectures with their default encoder and their own options."""
    import timm

    from pixelwise.models import get_model_class, list_models
    from pixelwise.models.registry import model_options

    if args.encoders is not None:
        names = timm.list_models(args.encoders or "*")
        print("\n".join(names) if names else f"no timm encoder matches {args.encoders!r}")
        return 0
    rows = []
    for arch in list_models():
        options = model_options(arch)
        own = [f"{k}={v!r}" for k, v in options.items() if k not in COMMON_OPTIONS]
        cls = get_model_class(arch)
        rows.append([arch, cls.__name__, str(options.get("encoder_name", "-")), ", ".join(own)])
    print(_table(rows, ["arch", "class", "default encoder", "architecture options"]))
    print(
        "\nEvery architecture also takes in_channels, classes, activation and (except unet2015) "
        "encoder_name, encoder_depth, encoder_weights, encoder_freeze.\n"
        "Encoders: any timm model with feature_info; list them with `pixelwise models --encoders 'resnet*'`."
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the compute device and thread settings."""
    import numpy
    import timm
    import torch
    import torchvision

    from pixelwise._version import __version__

    if torch.cuda.is_available():
        device = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        device = f"cuda ({device})"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    rows = [
        ["pixelwise", __version__],
        ["python", platform.python_version()],
        ["torch", torch.__version__],
        ["torchvision", torchvision.__version__],
        ["timm", timm.__version__],
        ["numpy", numpy.__version__],
        ["platform", platform.platform()],
        ["device", device],
        ["cpu capability", torch.backends.cpu.get_cpu_capability()],
        ["cpu cores", str(os.cpu_count())],
        ["torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"],
    ]
    print(_table(rows, ["item", "value"]))
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: give N or HxW, e.g. 512 or 384x512")
    return (parts[0], parts[-1])


def cmd_bench(args: argparse.Namespace) -> int:
    """Build a model and time forward passes on random input."""
    import torch

    from pixelwise.models import create_model

    options = {"classes": args.classes, "in_channels": args.in_channels}
    if args.encoder:
        options["encoder_name"] = args.encoder
    model = create_model(args.model, **options).eval()
    height, width = args.size
    x = torch.randn(args.batch_size, args.in_channels, height, width)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(args.runs):
            start = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    times.sort()
    median = times[len(times) // 2]
    print(
        f"{type(model).__name__}({model.config.get('encoder_name', '')}) params={params / 1e6:.2f}M "
        f"input={list(x.shape)} output={list(y.shape)} "
        f"forward median={median * 1e3:.1f} ms over {args.runs} runs ({torch.get_num_threads()} threads)"
    )
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """Read every image/mask pair once, print what is wrong per file and the class statistics."""
    from pixelwise.data import ClassInfo, check_dataset

    classes, num_classes = None, None
    if args.classes is not None:
        if args.classes.isdigit():
            num_classes = int(args.classes)
        else:
            classes = ClassInfo.load(args.classes)
    report = check_dataset(
        args.path, split=args.split, num_classes=num_classes, classes=classes, ignore_index=args.ignore_index
    )
    print(report.format(max_problems=None))
    return 0 if report.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model; flags override the YAML config; --resume continues a run."""
    from pathlib import Path

    from pixelwise.errors import ConfigError
    from pixelwise.training.cli_args import overrides_from
    from pixelwise.training.config import resolve
    from pixelwise.training.run import process_start, train

    overrides = overrides_from(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there; pass a run directory (runs/<name>).")
        config = resolve(
            str(run_dir / "config.yaml"), overrides | {"runs_dir": str(run_dir.parent), "name": run_dir.name}
        )
    else:
        config = resolve(args.config, overrides)
    result = train(config, resume=bool(args.resume), start=process_start())  # the budget covers the whole command
    best = f"{result.best_miou:.4f}" if result.best_miou is not None else "n/a"
    print(f"run: {result.run_dir}  best val mIoU: {best}  epochs: {result.epochs}  time: {result.seconds:.0f} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained model on a data split and write metrics.json and report.html."""
    from pixelwise.evaluate import evaluate

    metrics = evaluate(
        args.checkpoint,
        args.data,
        split=args.split,
        out_dir=args.out,
        gallery_size=args.gallery,
        files=args.files,
        instances=args.instances,
        instance_method=args.instance_method,
        tta=args.tta,
    )
    rows = [
        [name, _fmt(iou), _fmt(f1), _fmt(p), _fmt(r)]
        for name, iou, f1, p, r in zip(
            metrics["class_names"], metrics["iou"], metrics["f1"], metrics["precision"], metrics["recall"], strict=True
        )
    ]
    print(_table(rows, ["class", "IoU", "F1", "precision", "recall"]))
    summary = f"mean IoU {metrics['mean_iou']:.4f}  mean F1 {metrics['mean_f1']:.4f}"
    print(f"\n{summary}  pixel accuracy {metrics['accuracy']:.4f}")
    if "instances" in metrics:
        found = metrics["instances"]
        keys = ("dsb_score", "pq", "sq", "rq", "f1", "precision", "recall", "count_error")
        print(f"instances ({found['method']}): " + "  ".join(f"{k} {_fmt(found[k])}" for k in keys))
    print(f"report: {metrics['report']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate data, train, evaluate and predict, offline, in a few minutes."""
    from pixelwise.demo import run_demo

    run_demo(args.out, max_minutes=args.max_minutes, progress=not args.no_progress)
    return 0


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelwise",
        description="Image segmentation on PyTorch: models, training, metrics and tiled inference.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = commands.add_parser("models", help="list the architectures and their options")
    models.add_argument(
        "--encoders", nargs="?", const="", metavar="PATTERN", help="list timm encoder names instead (e.g. 'resnet*')"
    )
    models.set_defaults(func=cmd_models)

    info = commands.add_parser("info", help="print versions, device and thread settings")
    info.set_defaults(func=cmd_info)

    bench = commands.add_parser("bench", help="time forward passes of a model on random input")
    bench.add_argument("--model", default="unet", help="architecture name (see `pixelwise models`)")
    bench.add_argument("--encoder", default=None, help="timm encoder name (default: the architecture's)")
    bench.add_argument("--size", type=_parse_size, default=(512, 512), help="input size N or HxW (default 512)")
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--in-channels", type=int, default=3)
    bench.add_argument("--classes", type=int, default=2)
    bench.add_argument("--runs", type=int, default=5)
    bench.set_defaults(func=cmd_bench)

    check = commands.add_parser(
        "check-data", help="check a data folder: unpaired, unreadable or mismatched files, class frequencies"
    )
    check.add_argument("path", help="data folder with images/ and masks/ (or split folders train/, val/, ...)")
    check.add_argument("--split", default=None, help="split folder to check, e.g. train")
    check.add_argument(
        "--classes",
        default=None,
        metavar="K|FILE",
        help="number of classes, or a classes.yaml/.json (default: the folder's class file, else inferred)",
    )
    check.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="mask value of void pixels (default 255; masks holding only 0 and 255 read 255 as the foreground)",
    )
    check.set_defaults(func=cmd_check_data)

    train = commands.add_parser("train", help="train a model on a data folder (Lightning; CPU, GPU, DDP)")
    train.add_argument("--config", help="YAML file of training options (flags override it)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.ckpt")
    from pixelwise.training.cli_args import add_train_arguments

    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="metrics, confusion matrix and report.html for a trained model")
    evaluate.add_argument("--checkpoint", required=True, help="run directory (runs/<name>), saved model or .ckpt")
    evaluate.add_argument("--data", required=True, help="data folder")
    evaluate.add_argument("--split", default="val", help="split subfolder to evaluate (default val)")
    evaluate.add_argument("--out", default=None, help="output folder (default <run>/eval-<split>)")
    evaluate.add_argument("--gallery", type=int, default=8, help="number of example panels in the report")
    evaluate.add_argument("--files", default=None, help="only these files: a glob over file names, e.g. '2[0-4]'")
    evaluate.add_argument(
        "--instances",
        action="store_true",
        help="also score objects: precision/recall/F1 at IoU 0.5, DSB score, panoptic quality (true objects from "
        "the data's instances/ folder, else connected components of the masks)",
    )
    evaluate.add_argument(
        "--instance-method",
        choices=("auto", "components", "watershed"),
        default="auto",
        help="how probabilities become objects (default auto: watershed for --target boundary models, else components)",
    )
    evaluate.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation, probabilities averaged (default none)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    from pixelwise.predict import add_predict_parser

    add_predict_parser(commands)
    from pixelwise.export_cli import add_export_parser

    add_export_parser(commands)

    demo = commands.add_parser("demo", help="offline demo: synthetic data → training → evaluation → report")
    demo.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    demo.add_argument("--max-minutes", type=float, default=None, help="training budget in minutes (default 3)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    from pixelwise.experiments.cli import add_experiment_parser

    add_experiment_parser(commands)
    return parser


def _version() -> str:
    from pixelwise._version import __version__

    return f"pixelwise {__version__}"


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a batch scheduler's time limit) unwinds like Ctrl-C, so that every
    temporary file being written is removed on the way out."""
    raise SystemExit(128 + signum)


def _printable_names() -> None:
    """File names are data: one that is not valid UTF-8 prints with backslash escapes instead of
    failing on a strict terminal."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _printable_names()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.func(args)
    except PixelwiseError as error:
        print(f"pixelwise {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixelwise {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`pixelwise check-data DIR | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
