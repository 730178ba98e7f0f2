"""The streaming variant of a checkpoint for token reuse (`vitedge.model.eventful`): an ONNX
graph that takes the frame and the previous state and returns the result and the new
state, `k` tokens recomputed per gate, every shape static. Run it with
`vitedge.runtime.tokens.TokenReuse`, beside the same graph at k = every token (the full
pass that starts a stream and refreshes it every N frames), which an export with fewer
tokens writes next to it (`full_pass_path`) and names in its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitedge.errors import ExportError, require
from vitedge.manifest import set_onnx_manifest

STATE_INPUT = "state.{block}.{name}"
STATE_OUTPUT = "new_state.{block}.{name}"
TOKEN_REUSE_KEY = "token_reuse"
"""The manifest's `source` entry: tokens per gate (`k`), the token count (`tokens`) and,
where k is fewer, the file name of the full pass beside it (`full`)."""


def full_pass_path(streaming: str | Path) -> Path:
    """Where the full pass of a streaming graph lives: `cam.stream.onnx` ->
    `cam.stream.full.onnx` (the same folder, so the two travel together)."""
    path = Path(streaming)
    suffix = ".onnx" if path.suffix == ".onnx" else path.suffix
    return path.with_name(path.name.removesuffix(suffix) + ".full" + suffix)


@dataclass
class StreamingExport:
    output: Path
    k: int
    tokens: int
    state_names: list[str]
    full: Path
    """The full pass (k = every token): `output` itself, or the graph written beside it."""


def export_streaming(checkpoint: str | Path, output: str | Path, k: int | None = None,
                     opset: int = 17, batch: int = 1, arch: str | None = None
                     ) -> StreamingExport:
    """Write the streaming graph of `checkpoint` (of architecture `arch` where the file
    does not say, as `ExportOptions.arch`) with `k` tokens per gate (None: every token, the
    full pass) for images (B, C, H, W) preprocessed as the manifest says, at a fixed batch
    (one state per camera). With fewer tokens than the model has, its full pass is written
    too, at `full_pass_path(output)`, and the manifest names it."""
    require("torch", "export", "exporting a streaming graph")
    import onnx
    import torch

    from vitedge.fileio import atomic_path
    from vitedge.graph import save_onnx
    from vitedge.inputs import refuse_overwriting_inputs
    from vitedge.model.eventful import STATE_PER_BLOCK, StreamingViT
    from vitedge.model.importer import ImportOptions, load_checkpoint

    refuse_overwriting_inputs(output, checkpoint)
    imported = load_checkpoint(checkpoint, ImportOptions(arch=arch))
    model = imported.model.eval()
    tokens = imported.config.num_tokens
    stream = StreamingViT(model, tokens if k is None else k)
    cfg = imported.config
    x = torch.zeros(batch, cfg.in_chans, *cfg.img_size)
    state = stream.initial_state(batch)
    depth = len(model.blocks)
    names = [(b, n) for b in range(depth) for n in STATE_PER_BLOCK]
    inputs = ["images"] + [STATE_INPUT.format(block=b, name=n) for b, n in names]
    outputs = ["logits" if cfg.num_classes else "features"] + [
        STATE_OUTPUT.format(block=b, name=n) for b, n in names]
    with atomic_path(output) as tmp, torch.no_grad():
        try:
            torch.onnx.export(stream, (x, *state), str(tmp), input_names=inputs,
                              output_names=outputs, opset_version=opset, dynamo=False)
        except Exception as exc:  # noqa: BLE001 - the exporter's own failure, one line
            raise ExportError(f"the streaming graph did not export: {exc}") from None
        graph = onnx.load(str(tmp))
    from vitedge.export.exporter import check_onnx

    check_onnx(graph)  # the ONNX checker, shape inference, TensorRT's operators and parser
    full = Path(output)
    entry: dict[str, int | str] = {"k": stream.k, "tokens": tokens}
    if stream.k < tokens:
        full = export_streaming(checkpoint, full_pass_path(output), None, opset, batch,
                                arch).output
        entry["full"] = full.name
    manifest = imported.manifest("images")
    manifest.source = {**manifest.source, TOKEN_REUSE_KEY: entry}
    set_onnx_manifest(graph, manifest)
    save_onnx(graph, output)
    return StreamingExport(Path(output), stream.k, tokens, inputs[1:], full)

