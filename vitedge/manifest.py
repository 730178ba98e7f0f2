"""The manifest: what a deployed model needs besides its weights (architecture,
preprocessing, labels, precision, provenance). It travels inside the ONNX model as one
versioned JSON entry of `metadata_props`, and beside a TensorRT engine as a JSON file."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge import __version__
from vitedge.architecture import ViTConfig
from vitedge.errors import VitedgeError

MANIFEST_KEY = "vitedge.manifest"
SCHEMA_VERSION = 1
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """How a decoded RGB image becomes the model's float input.

    resize_mode "shorter": scale the shorter side to `resize[0]` keeping the aspect ratio
    (timm's eval transform, torchvision); "exact": scale to `resize` (H, W) regardless of
    aspect (Hugging Face's ViTImageProcessor). Then centre-crop to `crop` (H, W), scale to
    [0, 1], subtract `mean` and divide by `std` per channel.
    """

    crop: tuple[int, int] = (224, 224)
    resize: tuple[int, int] = (248, 248)
    resize_mode: str = "shorter"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shorter", "exact"):
            raise VitedgeError(f"unknown resize mode '{self.resize_mode}' (shorter, exact)")
        if self.interpolation not in INTERPOLATIONS:
            raise VitedgeError(
                f"unknown interpolation '{self.interpolation}' ({', '.join(INTERPOLATIONS)})"
            )
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise VitedgeError("preprocessing mean and std must have one positive std per mean")

    @classmethod
    def from_crop_pct(
        cls,
        size: tuple[int, int],
        crop_pct: float,
        interpolation: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> Preprocess:
        """timm's eval transform: resize to floor(size / crop_pct), then centre crop."""
        return cls(
            crop=size,
            resize=(int(size[0] / crop_pct), int(size[1] / crop_pct)),
            resize_mode="shorter" if size[0] == size[1] else "exact",
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            crop_pct=crop_pct,
        )

    def fraction(self) -> float:
        """The crop fraction: as the checkpoint gave it, else as the sizes imply."""
        return self.crop_pct or self.crop[0] / self.resize[0]

    def with_size(self, size: tuple[int, int]) -> Preprocess:
        """The same recipe for another model input size: the same crop fraction, resized
        to floor(size / fraction) as timm does (the sizes alone would round it off)."""
        if tuple(size) == self.crop:
            return self
        pct = self.fraction()
        return dataclasses.replace(
            self, crop=size, resize=(int(size[0] / pct), int(size[1] / pct)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "crop": list(self.crop),
            "resize": list(self.resize),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            crop=(int(d["crop"][0]), int(d["crop"][1])),
            resize=(int(d["resize"][0]), int(d["resize"][1])),
            resize_mode=d["resize_mode"],
            interpolation=d["interpolation"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=d.get("crop_pct"),
        )


@dataclass
class Manifest:
    architecture: ViTConfig
    preprocess: Preprocess
    labels: list[str] | None = None
    input: str = "images"
    precision: str = "fp32"
    source: dict[str, Any] = field(default_factory=dict)
    vitedge_version: str = __version__
    schema: int = SCHEMA_VERSION

    @property
    def output_name(self) -> str:
        return "logits" if self.architecture.num_classes > 0 else "features"

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": self.schema,
                "vitedge_version": self.vitedge_version,
                "architecture": self.architecture.to_dict(),
                "preprocess": self.preprocess.to_dict(),
                "labels": self.labels,
                "input": self.input,
                "precision": self.precision,
                "source": self.source,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
            schema = int(d["schema"])
        except (ValueError, KeyError, TypeError) as exc:
            raise VitedgeError("the model's vitedge manifest is not valid JSON") from exc
        if schema > SCHEMA_VERSION:
            raise VitedgeError(
                f"the model's manifest has schema {schema}, newer than this vitedge reads "
                f"({SCHEMA_VERSION})",
                "upgrade vitedge",
            )
        try:
            return cls(
                architecture=ViTConfig.from_dict(d["architecture"]),
                preprocess=Preprocess.from_dict(d["preprocess"]),
                labels=d.get("labels"),
                input=d["input"],
                precision=d["precision"],
                source=d.get("source", {}),
                vitedge_version=d.get("vitedge_version", "?"),
                schema=schema,
            )
        except (KeyError, TypeError) as exc:
            raise VitedgeError(f"the model's manifest lacks a field: {exc}") from exc


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


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's `metadata_props` without parsing the graph: the protobuf's top-level
    fields are walked and every other one (the graph, gigabytes for a large model) is
    skipped by its length. Pure Python, so the runtime can tell what a file is before it
    opens a session. Raises ValueError for a file that is not protobuf."""
    entries: dict[str, str] = {}
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
                else:
                    f.seek(length, 1)
            else:
                raise ValueError(f"not an ONNX model (wire type {wire})")
    return entries


def _string_pair(data: bytes) -> tuple[str, str]:
    import io

    f, out = io.BytesIO(data), {1: "", 2: ""}
    while (tag := _varint(f)) is not None:
        if tag & 7 != 2:
            raise ValueError("malformed metadata entry")
        length = _varint(f) or 0
        out[tag >> 3] = f.read(length).decode("utf-8", errors="replace")
    return out[1], out[2]


def manifest_from_file(path: str | Path) -> Manifest | None:
    """The manifest of an ONNX file, read without loading its graph; None when vitedge did
    not make it."""
    try:
        meta = read_onnx_metadata(path)
    except (ValueError, OSError) as exc:
        raise VitedgeError(f"{path} is not an ONNX model: {exc}",
                           "vitedge export makes one") from exc
    return Manifest.from_json(meta[MANIFEST_KEY]) if MANIFEST_KEY in meta else None


def manifest_from_onnx(model: Any) -> Manifest | None:
    """The manifest stored in an onnx.ModelProto, or None for a model vitedge did not make."""
    for prop in model.metadata_props:
        if prop.key == MANIFEST_KEY:
            return Manifest.from_json(prop.value)
    return None


def set_onnx_manifest(model: Any, manifest: Manifest) -> None:
    for prop in list(model.metadata_props):
        if prop.key == MANIFEST_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = MANIFEST_KEY
    entry.value = manifest.to_json()


def require_manifest(model: Any, path: str | Path) -> Manifest:
    manifest = manifest_from_onnx(model)
    if manifest is None:
        raise VitedgeError(f"{path} has no vitedge manifest",
                           "export it with `vitedge export` so preprocessing and labels travel with it")
    return manifest
