"""The manifest: what a deployed model needs besides its weights (architecture,
preprocessing, labels, precision, provenance). It travels inside the ONNX model as one
versioned JSON entry of `metadata_props`, and beside a TensorRT engine as a JSON file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.architecture import ViTConfig
from vitedge.errors import VitedgeError
from vitedge.onnx_file import external_file, read_onnx_fields
from vitedge.precisions import RECORDED
from vitedge.version import __version__

MANIFEST_KEY = "vitedge.manifest"
SCHEMA_VERSION = 1
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


MAX_RESIZE = 8192


def _size(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise VitedgeError(f"the manifest's preprocess {name} must be [H, W] whole numbers, not "
                       f"{value!r:.60}")


def _numbers(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    raise VitedgeError(f"the manifest's preprocess {name} must be a list of numbers, not "
                       f"{value!r:.60}")


@dataclass(frozen=True)
class Preprocess:
    """How a decoded RGB image becomes the model's float input.

    resize_mode "shorter": scale the shorter side to `resize[0]` keeping the aspect ratio
    (timm's eval transform, torchvision); "exact": scale to `resize` (H, W) regardless of
    aspect (Hugging Face's ViTImageProcessor). Then centre-crop to `crop` (H, W), scale to
    [0, 1], subtract `mean` and divide by `std` per channel. An odd margin is split as
    `crop_offset` says: "round" (torchvision's CenterCrop, timm) or "floor" (Hugging Face's
    image processors), one pixel apart.
    """

    crop: tuple[int, int] = (224, 224)
    resize: tuple[int, int] = (248, 248)
    resize_mode: str = "shorter"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float | None = None
    crop_offset: str = "round"

    def crop_box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the centre crop in an image of that size."""
        ch, cw = self.crop
        if self.crop_offset == "floor":
            return (height - ch) // 2, (width - cw) // 2
        return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))

    def __post_init__(self) -> None:
        if self.crop_offset not in ("round", "floor"):
            raise VitedgeError(f"unknown crop offset '{self.crop_offset}' (round, floor)")
        if self.resize_mode not in ("shorter", "exact"):
            raise VitedgeError(f"unknown resize mode '{self.resize_mode}' (shorter, exact)")
        if self.interpolation not in INTERPOLATIONS:
            raise VitedgeError(
                f"unknown interpolation '{self.interpolation}' ({', '.join(INTERPOLATIONS)})"
            )
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise VitedgeError("preprocessing mean and std must have one positive std per mean")
        for name in ("crop", "resize"):
            size = getattr(self, name)
            if not (len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                           and 1 <= v <= MAX_RESIZE for v in size)):
                raise VitedgeError(f"preprocessing {name} must be two sizes from 1 to "
                                   f"{MAX_RESIZE}, not {size!r}")
        if not 1 <= len(self.mean) <= 16 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in (*self.mean, *self.std)):
            raise VitedgeError("preprocessing mean and std must be 1 to 16 finite numbers")
        if self.crop_pct is not None and (not isinstance(self.crop_pct, (int, float))
                                          or not 0 < self.crop_pct <= 1):
            raise VitedgeError(f"preprocessing crop_pct must be in (0, 1], not {self.crop_pct!r}")

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
            # left out at its default: a manifest written before it hashes the same
            **({"crop_offset": self.crop_offset} if self.crop_offset != "round" else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        if not isinstance(d, dict):
            raise VitedgeError("the manifest's preprocess must be an object")
        missing = [k for k in ("crop", "resize", "resize_mode", "interpolation", "mean", "std")
                   if k not in d]
        if missing:
            raise VitedgeError(f"the manifest's preprocess lacks '{missing[0]}'")
        return cls(
            crop=_size(d["crop"], "crop"),
            resize=_size(d["resize"], "resize"),
            resize_mode=d["resize_mode"],
            interpolation=d["interpolation"],
            mean=_numbers(d["mean"], "mean"),
            std=_numbers(d["std"], "std"),
            crop_pct=d.get("crop_pct"),
            crop_offset=d.get("crop_offset", "round"),
        )


INPUTS = ("images", "patches", "frames", "pixels")
SCORES = ("softmax", "sigmoid")
"""How class scores come from logits: softmax (one class), or an independent sigmoid per
class (a SigLIP zero-shot head)."""


class IntegrityError(VitedgeError):
    """An artifact changed since vitedge wrote it: its graph or manifest is not what its
    checksum says."""


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
    integrity: dict[str, Any] = field(default_factory=dict)
    """sha256 of the graph (`graph_sha256`) and of this manifest without this field
    (`manifest_sha256`), set when vitedge writes the artifact and checked when it is read."""
    score: str = "softmax"
    """How class scores come from the logits (SCORES); a headless model has none."""

    @property
    def output_name(self) -> str:
        return "logits" if self.architecture.num_classes > 0 else "features"

    @property
    def is_classifier(self) -> bool:
        return self.architecture.num_classes > 0

    def outputs(self) -> dict[str, str]:
        """What each output is, in words (the manifest's JSON carries it for other tools)."""
        cfg = self.architecture
        if not self.is_classifier:
            return {"features": f"image embedding, {cfg.feature_dim} floats (L2-normalise it "
                                "to compare by cosine similarity)"}
        scores = ("independent sigmoid probabilities per class" if self.score == "sigmoid"
                  else "softmax over the classes")
        head = "zero-shot head (text embeddings), " if cfg.head_l2norm else ""
        return {"logits": f"{cfg.num_classes} class scores ({head}{scores}), in `labels` order"}

    def _content(self) -> dict[str, Any]:
        content = {
            "schema": self.schema,
            "vitedge_version": self.vitedge_version,
            "architecture": self.architecture.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "labels": self.labels,
            "input": self.input,
            "precision": self.precision,
            "source": self.source,
        }
        if self.score != "softmax":  # left out at its default: older manifests hash the same
            content["score"] = self.score
        return content

    def digest(self) -> str:
        """sha256 of what the manifest says (everything but `integrity`)."""
        return hashlib.sha256(json.dumps(self._content(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        content = self._content()
        content["outputs"] = self.outputs()  # derived, for readers other than vitedge
        if self.integrity:
            content["integrity"] = self.integrity
        return json.dumps(content, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """A manifest from its JSON, every field checked for type and range, and for its own
        checksum when it carries one: one VitedgeError for the first thing that is wrong."""
        try:
            d = json.loads(text)
        except RecursionError as exc:
            raise VitedgeError("the model's vitedge manifest is nested too deeply") from exc
        except (ValueError, TypeError) as exc:
            raise VitedgeError("the model's vitedge manifest is not valid JSON") from exc
        if not isinstance(d, dict):
            raise VitedgeError("the model's vitedge manifest is not a JSON object")
        schema = d.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise VitedgeError(f"the model's manifest has no valid schema number ({schema!r})")
        if schema > SCHEMA_VERSION:
            raise VitedgeError(
                f"the model's manifest has schema {schema}, newer than this vitedge reads "
                f"({SCHEMA_VERSION})",
                "upgrade vitedge",
            )
        missing = [k for k in ("architecture", "preprocess", "input", "precision") if k not in d]
        if missing:
            raise VitedgeError(f"the model's manifest lacks '{missing[0]}'")
        labels = d.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(
                isinstance(x, str) for x in labels)):
            raise VitedgeError("the model's manifest labels must be a list of strings")
        if d["input"] not in INPUTS:
            raise VitedgeError(f"the model's manifest input '{d['input']}' is not one of "
                               f"{', '.join(INPUTS)}")
        if d["precision"] not in RECORDED:
            raise VitedgeError(f"the model's manifest precision '{d['precision']}' is not one of "
                               f"{', '.join(RECORDED)}")
        if d.get("score", "softmax") not in SCORES:
            raise VitedgeError(f"the model's manifest score '{d.get('score')}' is not one of "
                               f"{', '.join(SCORES)}")
        for key, kind in (("source", dict), ("integrity", dict)):
            if not isinstance(d.get(key, {}), kind):
                raise VitedgeError(f"the model's manifest {key} must be an object")
        manifest = cls(
            architecture=ViTConfig.from_dict(d["architecture"]),
            preprocess=Preprocess.from_dict(d["preprocess"]),
            labels=labels,
            input=d["input"],
            precision=d["precision"],
            source=d.get("source", {}),
            vitedge_version=str(d.get("vitedge_version", "?")),
            schema=schema,
            integrity=d.get("integrity", {}),
            score=d.get("score", "softmax"),
        )
        cfg = manifest.architecture
        if labels is not None and cfg.num_classes and len(labels) != cfg.num_classes:
            raise VitedgeError(f"the model's manifest has {len(labels)} labels for "
                               f"{cfg.num_classes} classes")
        if len(manifest.preprocess.mean) not in (1, cfg.in_chans):
            raise VitedgeError(f"the model's manifest normalises {len(manifest.preprocess.mean)} "
                               f"channels for a {cfg.in_chans}-channel model")
        wanted = manifest.integrity.get("manifest_sha256")
        if wanted is not None and wanted != manifest.digest():
            raise IntegrityError("the model's manifest was changed since vitedge wrote it (its "
                                 "checksum does not match)", "export or build the model again")
        return manifest


def manifest_from_file(path: str | Path, verify: bool = True) -> Manifest | None:
    """The manifest of an ONNX file, read without parsing its graph; None when vitedge did
    not make it. With `verify`, the graph's bytes are hashed on the way and checked against
    the manifest's record: a model whose weights or manifest were changed since vitedge
    wrote it is refused (IntegrityError)."""
    from vitedge.inputs import require_regular_file

    require_regular_file(path, "model file")
    try:
        meta, graph_digest = read_onnx_fields(path, hash_graph=verify)
    except (ValueError, OSError) as exc:
        why = str(exc).removeprefix("not an ONNX model ").strip("()")
        raise VitedgeError(f"{path} is not an ONNX model ({why})",
                           "vitedge export makes one from a checkpoint") from exc
    if MANIFEST_KEY not in meta:
        return None
    try:
        manifest = Manifest.from_json(meta[MANIFEST_KEY])
    except VitedgeError as exc:
        raise type(exc)(f"{Path(path).name}: {exc.message}", exc.hint) from exc
    wanted = manifest.integrity.get("graph_sha256")
    if verify and wanted is not None and wanted != graph_digest:
        if _same_values(Path(path), manifest):  # re-saved (weights moved to or from a data file)
            return manifest
        raise IntegrityError(f"{path} was changed since vitedge wrote it: its graph (weights or "
                             "operators) is not the one its manifest records",
                             "export, quantize or build it again")
    external = manifest.integrity.get("external_sha256") or {}
    if not isinstance(external, dict):
        raise IntegrityError(f"{path}: its manifest's record of its data files is not a mapping")
    for location, digest in external.items():
        _check_data_file(Path(path), str(location), str(digest), verify)
    return manifest


def _same_values(path: Path, manifest: Manifest) -> bool:
    """Whether the model at `path`, its stored bytes not the ones vitedge wrote, still holds
    the graph and tensor values its manifest records (`tensors_sha256`; a manifest older
    than it: the graph vitedge wrote in one file), wherever the file now keeps its weights."""
    import onnx

    from vitedge.onnx_tensors import external_tensors, load_external_weights, tensors_digest

    wanted = manifest.integrity.get("tensors_sha256") or manifest.integrity.get("graph_sha256")
    try:
        model = onnx.load(str(path), load_external_data=False)
        if external_tensors(model):
            load_external_weights(model, path)
        return bool(tensors_digest(model) == wanted)
    except VitedgeError:
        raise  # a data file missing or out of place: said as such
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and the like: not the model it was
        return False


def _check_data_file(model: Path, location: str, digest: str, verify: bool) -> None:
    from vitedge.fileio import sha256_file

    file = external_file(model, location)
    if not file.is_file():
        raise IntegrityError(f"{model} keeps its weights in {location}, which is missing",
                             "copy the model's data files beside it")
    if verify and sha256_file(file) != digest:
        raise IntegrityError(f"{model}: its weights file {location} was changed or replaced "
                             "since vitedge wrote it", "export, quantize or build it again")


def manifest_from_onnx(model: Any) -> Manifest | None:
    """The manifest stored in an onnx.ModelProto, or None for a model vitedge did not make."""
    for prop in model.metadata_props:
        if prop.key == MANIFEST_KEY:
            return Manifest.from_json(prop.value)
    return None


def set_onnx_manifest(model: Any, manifest: Manifest,
                      external: dict[str, str] | None = None) -> None:
    """Store `manifest` in the model's metadata with the sha256 of the graph, of each data
    file it keeps its weights in (`external`: file name -> sha256) and of the manifest
    itself, so that a later change to any is caught when the file is read. The graph must
    be final: call this last, before writing (`vitedge.graph.save_onnx` does it again for
    a model it stores with a data file)."""
    from vitedge.onnx_tensors import external_tensors, tensors_digest

    tensors = (manifest.integrity.get("tensors_sha256") if external_tensors(model)
               else tensors_digest(model))  # stored apart: the value saved before it was
    manifest.integrity = {"graph_sha256": hashlib.sha256(model.graph.SerializeToString()).hexdigest(),
                          "manifest_sha256": manifest.digest()}
    if tensors:
        manifest.integrity["tensors_sha256"] = tensors
    if external:
        manifest.integrity["external_sha256"] = dict(external)
    _store_manifest(model, manifest)


def _store_manifest(model: Any, manifest: Manifest) -> None:
    for prop in list(model.metadata_props):
        if prop.key == MANIFEST_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = MANIFEST_KEY
    entry.value = manifest.to_json()


def require_manifest(model: Any, path: str | Path) -> Manifest:
    """The manifest of a model loaded from `path`, checked against the file's graph (see
    `manifest_from_file`), or one VitedgeError saying the model was not made by vitedge."""
    manifest = manifest_from_file(path) if Path(path).is_file() else manifest_from_onnx(model)
    if manifest is None:
        raise VitedgeError(f"{path} has no vitedge manifest",
                           "export it with `vitedge export` so preprocessing and labels travel with it")
    return manifest
