"""The streaming variant of a checkpoint for token reuse (`vitedge.model.eventful`): an ONNX
graph that takes the frame and the previous state and returns the result and the new
state, `k` tokens recomputed per gate, every shape static. Run it with
`vitedge.runtime.tokens.TokenReuse`, beside the same graph at k = every token (the full
pass that starts a stream and refreshes it every N frames), which an export with fewer
tokens writes next to it (`full_pass_path`) and names in its manifest.
`vitedge export CHECKPOINT --token-reuse K` is `export_token_reuse`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.errors import ExportError, require
from vitedge.manifest import Manifest, set_onnx_manifest
from vitedge.options import ExportOptions, ImportOptions
from vitedge.report import Reporter, reporter
from vitedge.runtime.tokens import TOKEN_REUSE_KEY

if TYPE_CHECKING:
    from vitedge.export.exporter import ExportResult
    from vitedge.export.verify import Comparison

STATE_INPUT = "state.{block}.{name}"
STATE_OUTPUT = "new_state.{block}.{name}"


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
    manifest: Manifest | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    """ONNX Runtime against PyTorch on sequences of frames (`verify`); empty without."""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def export_streaming(checkpoint: str | Path, output: str | Path, k: int | None = None,
                     opset: int = 17, batch: int = 1, arch: str | None = None,
                     imports: ImportOptions | None = None, verify: bool = False,
                     report: Reporter | None = None, chosen: dict[str, Any] | None = None,
                     imported: Any = None) -> StreamingExport:
    """Write the streaming graph of `checkpoint` (read with `imports`, else of architecture
    `arch` where the file does not say) with `k` tokens per gate (None: every token, the
    full pass) for images (B, C, H, W) preprocessed as the manifest says, at a fixed batch
    (one state per camera). With fewer tokens than the model has, its full pass is written
    too, at `full_pass_path(output)`, and the manifest names it. With `verify`, both graphs
    run in ONNX Runtime against the PyTorch module on sequences of frames first (the full
    pass, then k tokens with the state carried): nothing is written unless they agree.
    `chosen`: how `--token-reuse auto` chose k, recorded in the manifest's entry;
    `imported`: the checkpoint already loaded (as `--token-reuse auto` loads it to choose)."""
    require("torch", "export", "exporting a streaming graph")
    from vitedge.export.exporter import check_onnx
    from vitedge.graph import save_onnx
    from vitedge.inputs import refuse_overwriting_inputs
    from vitedge.model.eventful import STATE_PER_BLOCK, StreamingViT
    from vitedge.model.importer import load_checkpoint

    rep = reporter(report)
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        rep.step(name)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - timings[name], 3)

    refuse_overwriting_inputs(output, checkpoint)
    step("import")
    if imported is None:
        imported = load_checkpoint(checkpoint, imports or ImportOptions(arch=arch))
    model = imported.model.eval()
    tokens = imported.config.num_tokens
    stream = StreamingViT(model, tokens if k is None else k)
    full_stream = stream if stream.k == tokens else StreamingViT(model, tokens)
    done("import")
    depth = len(model.blocks)
    names = [(b, n) for b in range(depth) for n in STATE_PER_BLOCK]
    inputs = ["images"] + [STATE_INPUT.format(block=b, name=n) for b, n in names]
    outputs = ["logits" if imported.config.num_classes else "features"] + [
        STATE_OUTPUT.format(block=b, name=n) for b, n in names]
    step("build graph")
    graph = _graph(stream, imported, batch, inputs, outputs, opset)
    full_graph = graph if full_stream is stream else _graph(full_stream, imported, batch,
                                                            inputs, outputs, opset)
    done("build graph")
    step("check")
    for g in {id(graph): graph, id(full_graph): full_graph}.values():
        check_onnx(g)  # the ONNX checker, shape inference, TensorRT's operators and parser
    done("check")
    comparisons: list[Comparison] = []
    if verify:
        step("verify")
        comparisons = verify_streaming(full_graph, graph, full_stream, stream, imported, batch)
        done("verify")
    step("write")
    out, full = Path(output), Path(output)
    entry: dict[str, Any] = {"k": stream.k, "tokens": tokens,
                             **({"auto": chosen} if chosen is not None else {})}
    if full_graph is not graph:
        full = full_pass_path(output)
        refuse_overwriting_inputs(full, checkpoint)
        set_onnx_manifest(full_graph, _manifest(imported, {"k": tokens, "tokens": tokens}))
        save_onnx(full_graph, full)
        entry["full"] = full.name
    manifest = _manifest(imported, entry)
    set_onnx_manifest(graph, manifest)
    save_onnx(graph, out)
    done("write")
    return StreamingExport(out, stream.k, tokens, inputs[1:], full, manifest, comparisons,
                           timings, imported.notes)


def _manifest(imported: Any, entry: dict[str, Any]) -> Manifest:
    manifest: Manifest = imported.manifest("images")
    manifest.source = {**manifest.source, TOKEN_REUSE_KEY: entry}
    return manifest


def _graph(stream: Any, imported: Any, batch: int, inputs: list[str], outputs: list[str],
           opset: int) -> Any:
    """The ONNX graph of `stream` (a StreamingViT), in memory."""
    import onnx
    import torch

    from vitedge.lifetime import scratch_folder

    cfg = imported.config
    x = torch.zeros(batch, cfg.in_chans, *cfg.img_size)
    with scratch_folder("stream-") as tmp, torch.no_grad():
        path = Path(tmp) / "stream.onnx"
        try:
            torch.onnx.export(stream, (x, *stream.initial_state(batch)), str(path),
                              input_names=inputs, output_names=outputs, opset_version=opset,
                              dynamo=False)
        except Exception as exc:  # noqa: BLE001 - the exporter's own failure, one line
            raise ExportError(f"the streaming graph did not export: {exc}") from None
        return onnx.load(str(path))


def verify_streaming(full_graph: Any, graph: Any, full_stream: Any, stream: Any,
                     imported: Any, batch: int) -> list[Comparison]:
    """Each case of `vitedge.export.verify.verification_inputs` (random images, the bundled
    photos) as a sequence of frames: the first through the full pass, the others through
    `graph` with the state carried, in ONNX Runtime and in PyTorch (each carrying its own
    state); one comparison of the main outputs per case. ExportError beyond the FP32
    tolerance of `vitedge export`."""
    import numpy as np
    import torch

    from vitedge.export.verify import FP32_RELATIVE_TOLERANCE, compare, verification_inputs
    from vitedge.sessions import ort_session

    sessions = [ort_session(full_graph), ort_session(graph)]
    names = [i.name for i in sessions[0].get_inputs()]
    results = []
    for case, frames in verification_inputs(imported.config, imported.preprocess).items():
        got, want = [], []
        state = [np.zeros(i.shape, np.float32) for i in sessions[0].get_inputs()[1:]]
        reference = full_stream.initial_state(batch)
        for i, frame in enumerate(frames):
            x = np.repeat(frame[None].astype(np.float32), batch, axis=0)
            out = sessions[min(i, 1)].run(None, dict(zip(names, [x, *state], strict=True)))
            state = out[1:]
            with torch.no_grad():
                ref = (full_stream if i == 0 else stream)(torch.from_numpy(x), *reference)
            reference = list(ref[1:])
            got.append(out[0])
            want.append(ref[0].numpy())
        results.append(compare(f"{case}, streamed", np.concatenate(want), np.concatenate(got)))
    worst = max(results, key=lambda c: c.relative)
    if worst.relative > FP32_RELATIVE_TOLERANCE:
        raise ExportError(f"verification failed on {worst.case} frames: ONNX Runtime's streaming "
                          f"graph differs from PyTorch's by {worst.relative:.2e} relative "
                          f"(tolerance {FP32_RELATIVE_TOLERANCE:.0e}, max abs {worst.max_abs:.3e})",
                          "please report this with the checkpoint's config; --no-verify skips it")
    return results


TOKEN_REUSE_WITHOUT = {"merge": "--merge", "attention_outputs": "--attention-outputs",
                       "zero_shot": "--zero-shot", "external_data": "--external-data"}
"""Export options a streaming graph does not take (besides --input and --no-head)."""


def export_token_reuse(checkpoint: str | Path, output: str | Path, opts: ExportOptions,
                       report: Reporter | None = None) -> ExportResult:
    """`vitedge export CHECKPOINT --token-reuse K`: the streaming graph at `output` (and its
    full pass beside it where K is fewer than the tokens), verified against PyTorch unless
    `opts.verify` is off, as an export's result."""
    from vitedge.export.exporter import ExportResult

    assert opts.token_reuse is not None  # the caller's branch
    imports = ImportOptions(arch=opts.arch, num_heads=opts.num_heads, img_size=opts.img_size,
                            labels=opts.labels)
    k, choice, imported = opts.token_reuse, None, None
    if k == "auto":
        from vitedge.export.token_choice import choose_tokens
        from vitedge.model.importer import load_checkpoint

        assert opts.token_data is not None  # ExportOptions checks it
        imported = load_checkpoint(checkpoint, imports)
        choice = choose_tokens(imported, opts.token_data, opts.max_drop, rep=reporter(report))
        k = choice.k
    assert isinstance(k, int)
    made = export_streaming(checkpoint, output, k, opts.opset, opts.batch or 1,
                            imports=imports, verify=opts.verify, report=report,
                            chosen=choice.to_dict() if choice is not None else None,
                            imported=imported)
    assert made.manifest is not None
    files = [made.output] + ([made.full] if made.full != made.output else [])
    note = (f"token reuse: {made.k} of {made.tokens} tokens recomputed per gate"
            + (f"; its full pass is {made.full.name} beside it (keep them together; "
               "`vitedge build` builds both)" if made.full != made.output else
               " (every token: this graph is its own full pass)"))
    notes = [*made.notes, *([choice.note()] if choice is not None else []), note]
    return ExportResult(made.output, made.manifest, made.comparisons, made.timings,
                        notes, sum(f.stat().st_size for f in files))
