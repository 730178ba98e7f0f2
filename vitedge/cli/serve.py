"""Past one device: `serve`, `export-triton`, `export-deepstream`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from vitedge.cli.common import command, err, notes, out, print_json
from vitedge.cli.flags import flags, options
from vitedge.options import DeepStreamOptions, ServeOptions

SERVING_FLAGS = ("max_batch", "max_delay_us", "instances", "topk")


@command(json_help="Print the endpoints and models as one JSON line when ready.")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@flags(ServeOptions, "host", "http_port", "grpc_port", "metrics_port", *SERVING_FLAGS,
       "admin_key_file", "api_key_file")
@click.option("--log", type=click.Path(dir_okay=False), help="Keep tritonserver's log in FILE.")
def serve(artifacts: tuple[str, ...], log: str | None, as_json: bool, **kw: Any) -> None:
    """Serve ARTIFACTS (any vitedge model: ONNX Runtime artifact, ONNX, engine) through a
    real NVIDIA Triton Inference Server until Ctrl-C or SIGTERM. Each artifact is two
    models with dynamic batching: NAME takes the artifact's own input tensor ("input"),
    NAME_image takes encoded JPEG / PNG bytes ("image", BYTES [1]) decoded and preprocessed
    exactly as `vitedge.open` does. Both return logits, label, score, topk_ids and
    topk_scores. Health, metrics and statistics are Triton's own (/v2/health/ready,
    /metrics, /v2/models/NAME/stats)."""
    from vitedge.serve import exposure_notes
    from vitedge.serve import serve as run_server

    opts = options(ServeOptions, kw)
    status = err.status("starting tritonserver and loading the models")

    def ready(server: Any, entries: list[Any]) -> None:
        status.stop()
        info = {"http": f"http://{server.url}", "grpc": server.grpc_url,
                "metrics": server.metrics_url, "models": [e.to_dict() for e in entries]}
        if as_json:
            click.echo(json.dumps(info), nl=True)
            sys.stdout.flush()
            return
        table = Table("model", "input", "outputs", "max batch", title="serving (Ctrl-C stops)")
        for e in entries:
            table.add_row(e.name, ", ".join(f"{t.name} {t.dtype} {t.dims}" for t in e.inputs),
                          ", ".join(t.name for t in e.outputs), str(e.max_batch_size))
        out.print(table)
        out.print(f"HTTP {info['http']}  gRPC {info['grpc']}  metrics {info['metrics']}")
        notes(exposure_notes(opts))

    if not as_json:
        status.start()
    try:
        run_server(list(artifacts), opts, on_ready=ready, log=Path(log) if log else None)
    finally:
        status.stop()
    if not as_json:
        err.print("stopped: the server and its stubs are gone")


@command("export-triton")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="The model repository folder to write (created; must be empty or new).")
@flags(ServeOptions, *SERVING_FLAGS, "instance_kind", "onnx_backend")
def export_triton(artifacts: tuple[str, ...], output: str, as_json: bool, **kw: Any) -> None:
    """Write a Triton Inference Server model repository for ARTIFACTS: a TensorRT engine as
    tensorrt_plan (max_batch_size from its optimization profile), an ONNX model as
    onnxruntime_onnx, each with dynamic batching, instance_group, warm-up and labels, plus
    NAME_preprocess (Python backend: image bytes -> the model's input, vitedge's exact
    preprocessing) and the ensemble NAME_image (image bytes in). Every config.pbtxt is
    checked against Triton's own ModelConfig schema."""
    from vitedge.serve import export_repository

    entries = export_repository([Path(a) for a in artifacts], Path(output),
                                options(ServeOptions, kw))
    if as_json:
        print_json({"output": output, "models": [e.to_dict() for e in entries]})
        return
    table = Table("model", "kind", "max batch", "inputs", "outputs", title=f"wrote {output}")
    for e in entries:
        table.add_row(e.name, e.kind, str(e.max_batch_size), ", ".join(t.name for t in e.inputs),
                      ", ".join(t.name for t in e.outputs))
    out.print(table)
    notes([n for e in entries for n in e.notes])
    out.print(f"serve with: tritonserver --model-repository {output}  (see {output}/README.md)")


@command("export-deepstream")
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the config, the model and its labels.")
@flags(DeepStreamOptions, "process_mode", "batch_size", "classifier_threshold", "gie_id",
       "operate_on_gie_id")
def export_deepstream(artifact: str, output: str, as_json: bool, **kw: Any) -> None:
    """Write DeepStream's Gst-nvinfer config for ARTIFACT (a vitedge ONNX model: FP32, FP16
    or INT8 Q/DQ; nvinfer builds the engine on the device): net-scale-factor and offsets
    that reproduce the model's normalisation exactly (a model normalised per channel is
    refused: export it with --input pixels), the model with a Softmax output for nvinfer's
    classifier parser, and its labels."""
    from vitedge.serve import export_deepstream as run_export

    result = run_export(artifact, output, options(DeepStreamOptions, kw))
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"[green]wrote[/] {result.config}, {result.model.name}"
              + (f", {result.labels.name}" if result.labels else ""))
    for key, value in result.properties.items():
        out.print(f"  {key}={value}")
    notes(result.notes)


COMMANDS = [serve, export_triton, export_deepstream]
