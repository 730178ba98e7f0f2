"""ONNX graph plumbing shared by quantize and the backends: loading a model with one clear
error, who makes and who reads each tensor, initializers, extra outputs, topological order."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import onnx

from vitedge.errors import VitedgeError
from vitedge.onnx_file import external_file
from vitedge.onnx_tensors import (  # noqa: F401 - the graph's tensors, re-exported here
    all_tensors,
    external_tensors,
    load_external_weights,
    tensors_digest,
)

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2
"""A model larger than this cannot be one protobuf (2 GB): its weights go to a data file."""
EXTERNAL_THRESHOLD = 1024
"""Tensors of at least this many bytes go to the data file of a model stored that way."""


def load_onnx(path: str | Path, verify: bool = True) -> Any:
    """The ONNX model at `path`, with the weights it keeps in external files (beside it,
    never outside its folder; a vitedge model's checked against its manifest unless not
    `verify`) read in; or one VitedgeError saying it is missing, not ONNX, or refers to a
    data file it may not."""
    from google.protobuf.message import DecodeError

    from vitedge.inputs import require_regular_file

    p = require_regular_file(path, "model file")
    if p.stat().st_size == 0:
        raise VitedgeError(f"{p} is empty, not an ONNX model", "vitedge export makes one")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise VitedgeError(f"{p} is not an ONNX model", "vitedge export makes one") from exc
    if not model.graph.node:
        raise VitedgeError(f"{p} is not an ONNX model (it has no graph)", "vitedge export makes one")
    if external_tensors(model):
        if verify:
            from vitedge.manifest import manifest_from_file

            manifest_from_file(p)  # a vitedge model's data files are checked before use
        load_external_weights(model, p)
    return model


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether `model` is too large for one ONNX file."""
    return model.ByteSize() > PROTOBUF_LIMIT


def save_onnx(model: onnx.ModelProto, path: str | Path, external: bool | None = None) -> None:
    """Write `model` at `path` atomically: one file, or (`external`, or where it is too
    large for one) the graph in `path` and every tensor of 1 KB or more in one data file
    beside it, `NAME.onnx.SHA8.data`, written first; the model file then switches to it in
    one rename, and the data file the old model used is removed. A vitedge manifest in the
    model is given the sha256 of the stored graph and of the data file."""
    from vitedge.fileio import write_bytes_atomic

    target = Path(path)
    if external is None:
        external = needs_external_data(model)
    if not external:
        write_bytes_atomic(target, model.SerializeToString())
        return
    stored = onnx.ModelProto()
    stored.CopyFrom(model)
    blob = bytearray()
    for tensor in stored.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or \
                len(tensor.raw_data) < EXTERNAL_THRESHOLD:
            continue
        blob += b"\0" * (-len(blob) % 64)  # aligned, as onnx's own writer does
        offset = len(blob)
        blob += tensor.raw_data
        tensor.raw_data = b""
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", ""), ("offset", str(offset)),
                           ("length", str(len(blob) - offset))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    import hashlib

    digest = hashlib.sha256(blob).hexdigest()
    location = f"{target.name}.{digest[:8]}.data"
    for tensor in external_tensors(stored):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    old = _data_files(target)
    write_bytes_atomic(target.parent / location, bytes(blob))
    from vitedge.manifest import manifest_from_onnx, set_onnx_manifest

    manifest = manifest_from_onnx(stored)
    if manifest is not None:
        set_onnx_manifest(stored, manifest, external={location: digest})
    write_bytes_atomic(target, stored.SerializeToString())
    for stale in old - {target.parent / location}:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _data_files(model_path: Path) -> set[Path]:
    """The data files the model now at `model_path` (if any, written by vitedge) uses."""
    try:
        old = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no model there, or not one: nothing to clean up
        return set()
    files = set()
    for tensor in external_tensors(old):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value.startswith(model_path.name + "."):
                files.add(model_path.parent / entry.value)
    return files


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """tensor name -> [(node, input index)]."""
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                uses[name].append((node, i))
    return uses


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node reads and the graph does not output."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs the named intermediate tensors."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy


def topological_order(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """`nodes` reordered so every input is made before it is read (inserted nodes may
    have been placed before their producer)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return ordered


def data_files(model_path: Path) -> list[Path]:
    """The data files the ONNX model at `model_path` keeps its weights in (none for one
    stored in one file)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model: nothing beside it
        return []
    locations = {e.value for t in external_tensors(model) for e in t.external_data
                 if e.key == "location"}
    return [external_file(model_path, loc) for loc in sorted(locations)]


def publish_onnx(tmp: Path, target: Path) -> None:
    """Move a complete model written at `tmp` (with its data files beside it) onto `target`:
    its data files first, then the model file in one rename; the data files the model that
    was there used are removed once nothing refers to them."""
    from vitedge.fileio import publish

    old = _data_files(target)
    new = data_files(tmp)
    for file in new:
        publish(file, target.parent / file.name)
    publish(tmp, target)
    for stale in old - {target.parent / f.name for f in new}:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
