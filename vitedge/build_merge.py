"""`vitedge build --merge`: token merging (ToMe) for a build. A checkpoint is exported
merged, as MODEL.mergeR.onnx (never in the place of an unmerged MODEL.onnx), with `--merge
auto` timing the schedules with the build's own backend; an ONNX model is merged at export
or not at all, so a `--merge` that disagrees with it is refused. The merged artifact is
verified against the unmerged FP32 model too: exported from the checkpoint, or, for an ONNX
input, from the checkpoint it records where that lies beside it; where it cannot be had,
the verification says why in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitedge.architecture import merge_schedule
from vitedge.errors import VitedgeError
from vitedge.fileio import sha256_file
from vitedge.intermediates import Intermediates, manifest_of
from vitedge.manifest import Manifest
from vitedge.options import BuildOptions, ExportOptions
from vitedge.precisions import FP32
from vitedge.target import Target

MERGE_FIELDS = ("merge", "max_drop", "merge_data", "merge_images")
"""The export options that make a graph merged."""
FORM_FIELDS = ("batch", "opset", "external_data", "attention_outputs")
"""Export options that change the graph's form, not what its main output computes."""
REPEATED = ("arch", "num_heads", "img_size", "input_kind", "head")
"""Export options a build repeats from an ONNX model's record for its unmerged twin (plain
values; a file the export read, such as --labels, is recorded by name only). The other
options must match the defaults for an export of the same checkpoint to be that model."""


def merge_tag(merge: int | tuple[int, ...] | str | None) -> str:
    """What a merged export's (and artifact's) name carries after the model's name:
    `.merge8`, `.merge8-8-4-0`, `.merge-auto`; "" where nothing merges."""
    if merge is None or merge == 0 or (isinstance(merge, tuple) and not any(merge)):
        return ""
    if merge == "auto":
        return ".merge-auto"
    return ".merge" + ("-".join(map(str, merge)) if isinstance(merge, tuple) else str(merge))


def check_onnx_merge(src: Path, merge: int | tuple[int, ...] | str | None) -> None:
    """An ONNX INPUT with --merge: refused in one line where the graph's merging is not
    what --merge asks (a graph cannot be merged, or merged otherwise, after export)."""
    if merge is None:
        return
    manifest = manifest_of(src)
    if manifest is None:
        return  # the build refuses a model without a manifest itself
    cfg = manifest.architecture
    has = tuple(cfg.merge or ())
    if merge == "auto":
        if "merge_auto" in manifest.source:
            return  # its schedule was chosen by --merge auto at export
        raise VitedgeError(
            f"--merge auto chooses a schedule at export, and {src.name} is exported "
            + (f"merged already (r {_words(has)})" if has else "unmerged"),
            "build the checkpoint with --merge auto (vitedge build CHECKPOINT --merge auto)"
            + (", or drop --merge to build this one as it is" if has else ""))
    if isinstance(merge, str):
        raise VitedgeError("--merge takes a token count, one count per block, or auto")
    wanted = merge_schedule(cfg.replace(merge=()), merge)
    if wanted == has:
        return
    if not has:
        raise VitedgeError(f"{src.name} is an unmerged graph: token merging is built into the "
                           "graph at export and cannot be added to an ONNX model",
                           f"build the checkpoint instead: vitedge build CHECKPOINT --merge "
                           f"{_words(merge)}")
    raise VitedgeError(f"{src.name} is merged with r {_words(has)}, not the {_words(wanted)} "
                       f"--merge {_words(merge)} asks for: a graph cannot be merged again after "
                       "export", f"drop --merge to build it as it is, or build the checkpoint "
                       f"with --merge {_words(merge)}")


def _words(merge: Any) -> str:
    return ",".join(map(str, merge)) if isinstance(merge, (tuple, list)) else str(merge)


def merge_timer(target: Target, report: Any) -> Any:
    """`--merge auto`'s schedules timed with the build's backend (`merge_choice.backend_timer`),
    as FP32 graphs, or at the precision where the backend computes it from the FP32 graph
    (bf16): a quantized precision needs a calibration per schedule, which timing does not
    pay for. Where the CPU backends race (`cpu_race`), the schedule is chosen first, with
    the profile's backend, and the race then runs on the merged graph."""
    from vitedge.export.merge_choice import backend_timer

    backend = target.backend
    precision = target.precision if target.precision in backend.computes_from_fp32 else FP32
    return backend_timer(backend, target.profile, target.batch, precision, report)


def unmerged_reference(files: Intermediates, src: Path, manifest: Manifest, stem: str,
                       options: BuildOptions) -> tuple[Path | None, str | None]:
    """(the unmerged FP32 model to verify a merged build against, why there is none); both
    None for an unmerged graph (its FP32 model is the reference already) or without
    verification. A checkpoint INPUT is exported unmerged as STEM.onnx; an ONNX INPUT's own
    checkpoint is used where it lies beside it, unchanged, and was exported as a build
    exports."""
    if not options.verify.enabled or not manifest.architecture.merge:
        return None, None
    if src.suffix != ".onnx":
        return files.export(src, stem, options.export_options(merged=False),
                            step="export unmerged"), None
    what = "not measured against the unmerged FP32 model"
    name = manifest.source.get("file")
    checkpoint = src.parent / str(name) if name else None
    if checkpoint is None or not checkpoint.exists():
        named = name or "a checkpoint it does not name"
        return None, (f"{what}: {src.name} was exported from {named}, which is not beside it; "
                      "build that checkpoint with --merge to have it")
    sha = manifest.source.get("sha256")
    if checkpoint.is_file() and sha and sha256_file(checkpoint) != sha:
        return None, (f"{what}: {checkpoint.name} beside {src.name} is not the checkpoint it "
                      "was exported from (its sha256 differs)")
    recorded = manifest.source.get("export") or {}
    export = ExportOptions(batch=None, **{k: recorded[k] for k in REPEATED if k in recorded})
    key = export.key()
    differs = sorted(k for k in key if k not in MERGE_FIELDS + FORM_FIELDS
                     and recorded.get(k, key[k]) != key[k])
    if differs:
        return None, (f"{what}: {src.name} was exported with options a build does not repeat "
                      f"({', '.join(differs)}); `vitedge compare` compares it with an unmerged "
                      "export of your own")
    base = checkpoint.stem if checkpoint.is_file() else checkpoint.name
    if export != ExportOptions(batch=None) or \
            (src.parent / f"{base}.onnx").resolve() == src.resolve():
        base += ".unmerged"  # not a build's usual export, and never in the place of the input
    return files.export(checkpoint, base, export, step="export unmerged"), None


def merge_record(manifest: Manifest) -> dict[str, Any]:
    """The build result's account of the graph's token merging (schedule, tokens per block,
    GFLOPs against unmerged, --merge auto's choice); {} for an unmerged graph (but for
    --merge auto's choice where it chose none)."""
    cfg, auto = manifest.architecture, manifest.source.get("merge_auto")
    if not cfg.merge:
        return {"schedule": [], "auto": auto} if auto else {}
    return {"schedule": list(cfg.merge), "tokens_per_block": cfg.tokens_per_block(),
            "gflops": round(2 * cfg.macs() / 1e9, 4),
            "gflops_unmerged": round(2 * cfg.replace(merge=()).macs() / 1e9, 4),
            "auto": auto}
