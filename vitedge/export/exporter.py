"""Checkpoint -> verified ONNX model with its manifest inside: `vitedge export`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import ExportError, VitedgeError, require
from vitedge.export.onnx_graph import onnx_from_vit
from vitedge.export.tensorrt_ops import tensorrt_check
from vitedge.export.verify import FP32_RELATIVE_TOLERANCE, Comparison, verify_onnx_against_torch
from vitedge.graph import data_files, needs_external_data, save_onnx
from vitedge.inputs import refuse_overwriting_inputs
from vitedge.manifest import Manifest, set_onnx_manifest
from vitedge.options import ExportOptions, ImportOptions
from vitedge.report import Reporter, reporter


@dataclass
class ExportResult:
    output: Path
    manifest: Manifest
    comparisons: list[Comparison]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    size_bytes: int = 0
    vs_unmerged: list[Comparison] = field(default_factory=list)
    """With token merging: the merged PyTorch model against the unmerged one on the
    verification inputs (what merging costs: cosine, top-1 agreement)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "size_bytes": self.size_bytes,
            "verified": bool(self.comparisons),
            "comparisons": [c.to_dict() for c in self.comparisons],
            "vs_unmerged": [c.to_dict() for c in self.vs_unmerged],
            "tolerance_relative": FP32_RELATIVE_TOLERANCE,
            "timings_s": self.timings,
            "seconds": round(sum(self.timings.values()), 3),
            "notes": self.notes,
            "manifest": json.loads(self.manifest.to_json()),
        }


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    options: ExportOptions | None = None,
    report: Reporter | None = None,
    made_by: str = "export",
    merge_timer: Any = None,
) -> ExportResult:
    """Import a checkpoint, write the ViT as ONNX, check it and verify it against PyTorch.

    Nothing is written unless every check passes. The manifest records the options that
    shape the graph and who made it (`made_by`: an export `vitedge build` made is its own to
    make again). `merge_timer` (`vitedge.export.merge_choice.ScheduleTimer`): how --merge
    auto times its schedules (default: ONNX Runtime; `vitedge build`: its backend)."""
    opts = options or ExportOptions()
    rep = reporter(report)
    refuse_artifact_name(output)
    refuse_overwriting_inputs(output, checkpoint, opts.labels, opts.zero_shot,
                              opts.zero_shot_embeddings)
    require("torch", "export", "exporting a checkpoint")
    if opts.token_reuse is not None:
        raise VitedgeError("a streaming graph (token reuse) is exported by "
                           "vitedge.export.streaming.export_token_reuse",
                           "call that with these options")
    from vitedge.model.importer import load_checkpoint

    timings: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        rep.step(name)
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 3)

    with step("import"):
        imported = load_checkpoint(checkpoint, ImportOptions(
            arch=opts.arch, num_heads=opts.num_heads, img_size=opts.img_size, labels=opts.labels))
    if opts.zero_shot is not None:
        with step("zero-shot head"):
            from vitedge.export.zero_shot import tower_family, with_zero_shot_head, zero_shot_head
            from vitedge.model.importer import read_labels

            head = zero_shot_head(checkpoint, tower_family(imported.config),
                                  read_labels(opts.zero_shot), opts.prompts,
                                  opts.zero_shot_embeddings, opts.logit_scale, opts.logit_bias)
            imported = with_zero_shot_head(imported, head)
    if not opts.head:
        from vitedge.model.importer import without_head

        imported = without_head(imported)
    choice, unmerged = None, imported
    if opts.merge is not None:
        with step("merge schedule"):
            imported, choice = merged(imported, opts, rep, merge_timer)
    cfg = imported.config

    with step("build graph"):
        prep = imported.preprocess
        model = onnx_from_vit(cfg, imported.model.state_dict(), opts.input_kind, opts.batch,
                              opts.opset, opts.attention_outputs, (prep.mean, prep.std))
        manifest = imported.manifest(opts.input_kind)
        manifest.source = {**manifest.source, "export": opts.key(), "made_by": made_by}
        if choice is not None:
            manifest.source["merge_auto"] = choice.to_dict()
        set_onnx_manifest(model, manifest)

    with step("check"):
        check_onnx(model)

    comparisons: list[Comparison] = []
    if opts.verify:
        with step("verify"):
            comparisons = verify_onnx_against_torch(
                model, imported.model, cfg, imported.preprocess, opts.input_kind, opts.batch)
        worst = max(comparisons, key=lambda c: c.relative)
        if worst.relative > FP32_RELATIVE_TOLERANCE:
            raise ExportError(
                f"verification failed on {worst.case} inputs: ONNX Runtime differs from "
                f"PyTorch by {worst.relative:.2e} relative (tolerance "
                f"{FP32_RELATIVE_TOLERANCE:.0e}, max abs {worst.max_abs:.3e})",
                "please report this with the checkpoint's config; --no-verify skips the check",
            )
    vs_unmerged = []
    if opts.verify and cfg.merge:
        with step("vs unmerged"):
            vs_unmerged = merged_against_unmerged(imported, unmerged)

    with step("write"):
        external = opts.external_data or needs_external_data(model)
        save_onnx(model, output, external=external)
    if choice is not None:
        imported.notes.append(merge_note(choice))
    notes = imported.notes + ([f"the weights are in {', '.join(f.name for f in data_files(Path(output)))} "
                               "beside the model (keep them together)"] if external else [])
    size = Path(output).stat().st_size + sum(f.stat().st_size for f in data_files(Path(output)))
    return ExportResult(Path(output), manifest, comparisons, timings, notes, size, vs_unmerged)


def merged_against_unmerged(merged: Any, unmerged: Any) -> list[Comparison]:
    """The merged model's outputs against the unmerged model's, both in PyTorch, on the
    verification inputs (random and the bundled photos): what merging costs."""
    import torch

    from vitedge.export.verify import compare, verification_inputs

    found = []
    for case, x in verification_inputs(merged.config, merged.preprocess).items():
        with torch.no_grad():
            want = unmerged.model(torch.from_numpy(x)).numpy()
            got = merged.model(torch.from_numpy(x)).numpy()
        found.append(compare(case, want, got))
    return found


def refuse_artifact_name(output: str | Path) -> None:
    """`-o x.engine` (or `x.ov.xml`) names a backend's artifact, which an export is not: one
    line, as `vitedge build` refuses a name another backend's artifact has."""
    import vitedge.backends as backends

    name = Path(output).name
    named = [b for b in backends.all_backends()
             if name.endswith(b.suffix) and not b.suffix.endswith(".onnx")]
    if named:
        which = " or ".join(b.name for b in named)
        base = name.removesuffix(named[0].suffix)
        raise VitedgeError(f"-o {name} names a {which} artifact ({named[0].suffix}), but export "
                           "writes an ONNX model",
                           f"name it {base}.onnx; `vitedge build {base}.onnx` makes the "
                           f"{named[0].suffix}")


def merged(imported: Any, opts: ExportOptions, rep: Reporter, timer: Any = None
           ) -> tuple[Any, Any]:
    """The imported model with the token merging `opts.merge` asks for, and for `auto` the
    choice (`vitedge.export.merge_choice.MergeChoice`)."""
    from vitedge.architecture import merge_schedule
    from vitedge.model.importer import with_merge

    cfg = imported.config
    if cfg.rope:
        raise ExportError("token merging is undefined for rotary position embedding (EVA-02): "
                          "a merged token has no position to rotate by", "export without --merge")
    choice = None
    if opts.merge == "auto":
        from vitedge.export.merge_choice import choose_schedule

        choice = choose_schedule(imported, opts.max_drop, opts.merge_data, rep, timer,
                                 images=opts.merge_images, batch=opts.batch)
        schedule = choice.schedule
    else:
        assert not isinstance(opts.merge, str) and opts.merge is not None
        schedule = merge_schedule(cfg, opts.merge)
    return with_merge(imported, schedule), choice


def merge_note(choice: Any) -> str:
    """`--merge auto`'s choice in one line."""
    if not choice.schedule:
        return (f"--merge auto: no schedule within the budget ({choice.max_drop} points) on "
                f"{choice.images} images is faster than the unmerged model ({choice.timed_on}, "
                "here); exported unmerged")
    best = next(c for c in choice.candidates if c.schedule == list(choice.schedule))
    base = choice.candidates[0]
    which = f"r {best.r}" if best.r is not None else "schedule " + ",".join(map(str, best.schedule))
    fastest = min((c for c in choice.candidates[1:] if c.ms is not None), key=lambda c: c.ms)
    tie = (f"; ties with the fastest ({fastest.ms} ms, slower in {best.slower} of "
           f"{choice.rounds} rounds, or within {choice.tie_percent:g} %) with fewer FLOPs"
           if fastest is not best else "")
    return (f"--merge auto: {which} ({best.gflops} GFLOPs, {base.gflops} unmerged), "
            f"{choice.measure} {best.score} on {choice.images} held-out images, "
            f"{best.ms} ms against {base.ms} ms unmerged ({choice.timed_on}, here){tie}")


def check_onnx(model: Any) -> None:
    """ONNX checker, strict shape inference and TensorRT operator support, or ExportError."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX model fails the ONNX checker: {exc}") from exc
    problems = tensorrt_check(model)
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExportError("TensorRT's ONNX parser would reject: " + "; ".join(problems[:5]) + more)
