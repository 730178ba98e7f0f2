"""An ONNX file read without onnx: its `metadata_props` and its graph's digest, walking the
protobuf's top-level fields by hand (the graph, gigabytes for a large model, is skipped or
hashed, never parsed), and where the data files it keeps its weights in may be. Pure
Python, below the manifest and the graph helpers, which both use it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError

ONNX_METADATA_FIELD = 14
"""ModelProto.metadata_props: repeated StringStringEntryProto (key = 1, value = 2)."""


def _varint(f: Any) -> int | None:
    shift = result = 0
    while True:
        byte = f.read(1)
        if not byte:
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


ONNX_GRAPH_FIELD = 7


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's `metadata_props` without parsing the graph: the protobuf's top-level
    fields are walked and every other one (the graph, gigabytes for a large model) is
    skipped by its length. Pure Python, so the runtime can tell what a file is before it
    opens a session. Raises ValueError for a file that is not protobuf."""
    return read_onnx_fields(path, hash_graph=False)[0]


def read_onnx_fields(path: str | Path, hash_graph: bool) -> tuple[dict[str, str], str | None]:
    """(metadata_props, sha256 of the graph's serialized bytes or None)."""
    entries: dict[str, str] = {}
    graph_digest: str | None = None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while (tag := _varint(f)) is not None:
            field_number, wire = tag >> 3, tag & 7
            if wire == 0:
                if _varint(f) is None:
                    raise ValueError("truncated varint")
            elif wire == 1:
                f.seek(8, 1)
            elif wire == 5:
                f.seek(4, 1)
            elif wire == 2:
                length = _varint(f)
                if length is None or f.tell() + length > size:
                    raise ValueError("truncated field")
                if field_number == ONNX_METADATA_FIELD:
                    key, value = _string_pair(f.read(length))
                    entries[key] = value
                elif field_number == ONNX_GRAPH_FIELD and hash_graph:
                    digest = hashlib.sha256()
                    left = length
                    while left:
                        block = f.read(min(left, 1 << 22))
                        digest.update(block)
                        left -= len(block)
                    graph_digest = digest.hexdigest()
                else:
                    f.seek(length, 1)
            else:
                raise ValueError(f"not an ONNX model (wire type {wire})")
    return entries, graph_digest


def _string_pair(data: bytes) -> tuple[str, str]:
    import io

    f, out = io.BytesIO(data), {1: "", 2: ""}
    while (tag := _varint(f)) is not None:
        if tag & 7 != 2:
            raise ValueError("malformed metadata entry")
        length = _varint(f) or 0
        out[tag >> 3] = f.read(length).decode("utf-8", errors="replace")
    return out[1], out[2]


def external_file(model_path: Path, location: str) -> Path:
    """A data file a model at `model_path` refers to, refused in one line when its name
    leaves the model's folder (an absolute path, `..`, a link out of it)."""
    folder = model_path.resolve().parent
    candidate = Path(location)
    target = (folder / candidate).resolve()
    if candidate.is_absolute() or ".." in candidate.parts or not target.is_relative_to(folder):
        raise VitedgeError(f"{model_path} refers to weights at '{location}', outside its folder; "
                           "it is not read", "keep a model's data files beside it")
    return target
