"""The `vitedge` command: one module per group of commands, each command parsing its flags
(made from the options dataclasses, `flags.py`), calling one library function and printing
its result. User errors end as one line on stderr and a non-zero exit code.

    build.py   export, calibrate, quantize, build     (the build path)
    run.py     predict, embed, run, bench, explain, eval, compare
    reuse.py   tune-reuse (the frame-reuse threshold of run --reuse)
    serve.py   serve, export-triton, export-deepstream
    info.py    inspect, doctor, profiles, archs, demo-data
    common.py  consoles, --json / --debug, the progress bar; flags.py: options -> flags"""

from __future__ import annotations

import os
import sys

import click

from vitedge.cli import build, info, reuse, run, serve
from vitedge.cli.common import Activity, debug_option, err
from vitedge.errors import VitedgeError
from vitedge.version import __version__

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vitedge")
@debug_option()
def cli() -> None:
    """vitedge: a Vision Transformer from a training checkpoint to a fast, verified model
    on an edge device.

    \b
    Typical path:
      vitedge demo-data -o demo                   the tour's demo checkpoint and images
      vitedge inspect CHECKPOINT                  what export will read from a checkpoint
      vitedge export CHECKPOINT -o model.onnx     verified ONNX with preprocessing + labels
      vitedge inspect model.onnx                  what is inside
      vitedge calibrate model.onnx --data IMAGES  INT8 ranges from real images
      vitedge quantize model.onnx --precision int8 --calib model.calib.json -o int8.onnx
      vitedge eval int8.onnx --data LABELLED --reference model.onnx
      vitedge compare model.onnx int8.onnx --data LABELLED   accuracy, agreement, size, speed
      vitedge build model.onnx --precision int8 --data IMAGES   engine or ONNX Runtime model
      vitedge profiles                            device build profiles
      vitedge predict model.int8.ort.onnx photo.jpg   classify images
      vitedge embed dinov2.onnx gallery/ -o gallery.npy   embeddings of a headless model
      vitedge run model.engine --source 0         the camera loop
      vitedge tune-reuse model.onnx clip.mp4      the frame-reuse threshold (run --reuse)
      vitedge bench a.engine b.ort.onnx --batch 1,8   per-stage latency
      vitedge serve model.int8.ort.onnx           NVIDIA Triton on loopback, HTTP + gRPC
      vitedge export-triton model.engine -o repo  a Triton model repository for a fleet
      vitedge export-deepstream model.onnx -o ds  DeepStream nvinfer config
      vitedge doctor                              what this machine offers
    """


for _module in (build, run, reuse, serve, info):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns errors into one line and an exit code."""
    from vitedge.lifetime import finished, install_signal_cleanup, signalled

    install_signal_cleanup()  # SIGTERM / SIGINT leave no temporary file behind
    try:
        code = _run(argv)
    except SystemExit as exc:  # SIGTERM's handler raises it; anything else goes on up
        if not signalled():
            raise
        code = exc.code if isinstance(exc.code, int) else 1
    # after a signal, the process ends in `finished` with the signal's code (a signal whose
    # exception a callback swallowed included)
    return finished(signalled() or code)


def _run(argv: list[str] | None) -> int:
    Activity.start(None)
    try:
        cli.main(args=argv, prog_name="vitedge", standalone_mode=False)
    except click.exceptions.Abort:  # click's name for a KeyboardInterrupt
        err.print(Activity.interrupted() or "aborted", highlight=False)
        return 130
    except click.ClickException as exc:  # one line that starts as vitedge's own errors do
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (`{exc.ctx.command_path} --help` lists what it takes)"
        message = exc.format_message().rstrip(".")
        message = message[:1].lower() + message[1:]
        click.echo(f"error: {message}{hint}".replace("\n", " "), err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except VitedgeError as exc:
        return _fail(exc, EXIT_USER_ERROR, f"error: {exc}")
    except KeyboardInterrupt:
        err.print(Activity.interrupted() or "interrupted", highlight=False)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        return _fail(exc, EXIT_INTERNAL_ERROR,
                     f"internal error: {type(exc).__name__}: {exc} (run with --debug for the "
                     "traceback and please report it)")
    return 0


def _debug_enabled() -> bool:
    return os.environ.get("VITEDGE_DEBUG", "") not in ("", "0")


def _fail(exc: BaseException, code: int, line: str) -> int:
    from vitedge.lifetime import signalled

    if signalled():  # what failed after a SIGTERM / SIGINT failed because of it
        return signalled() or code
    if _debug_enabled():
        import traceback

        traceback.print_exception(exc)
    click.echo(line.replace("\n", " "), err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
