"""Read the tensors of a checkpoint file or folder, safely: safetensors, or PyTorch files
with `torch.load(weights_only=True)` (a pickle that needs code execution is refused)."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitedge.errors import CheckpointError, VitedgeError
from vitedge.inputs import read_json, require_regular_file

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema", "model_ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class RawCheckpoint:
    """Float32 tensors by name, plus whatever configuration travelled with them."""

    tensors: dict[str, torch.Tensor]
    files: list[Path]
    config: dict[str, Any] | None = None
    preprocessor: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stored_dtype: str = "float32"


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise CheckpointError(f"{path} is a symbolic link that leads nowhere (to itself, or "
                              "to a file that is gone)", "give the checkpoint file itself")
    if not path.exists():
        raise CheckpointError(f"no such file or folder: {path}")
    if path.is_dir():
        return _read_folder(path)
    if path.name in WEIGHT_FILES and (path.parent / "config.json").is_file():
        return _read_folder(path.parent, path)  # hf_vit/model.safetensors: its folder's config
    tensors, metadata = _read_file(path)
    return _finish(tensors, [path], metadata=metadata)


def _read_folder(folder: Path, weights: Path | None = None) -> RawCheckpoint:
    """A model folder (config.json, preprocessor_config.json, the weights); `weights`: the
    weights file of it the user named."""
    config = _read_json(folder / "config.json") if (folder / "config.json").exists() else None
    prep_file = folder / "preprocessor_config.json"
    preprocessor = _read_json(prep_file) if prep_file.exists() else None
    for name in WEIGHT_FILES:
        candidate = weights or folder / name
        if candidate.exists():
            break
    else:
        singles = [p for p in folder.iterdir() if p.suffix in (".safetensors", *TORCH_SUFFIXES)]
        if len(singles) != 1:
            raise CheckpointError(
                f"folder {folder} has no weights file vitedge recognises",
                "expected model.safetensors or pytorch_model.bin beside config.json",
            )
        candidate = singles[0]
    if candidate.name.endswith(".index.json"):
        files = _shards(folder, candidate)
        tensors: dict[str, Any] = {}
        metadata: dict[str, str] = {}
        for f in files:
            part, meta = _read_file(f)
            tensors.update(part)
            metadata.update(meta)
    else:
        files = [candidate]
        tensors, metadata = _read_file(candidate)
    return _finish(tensors, files, config, preprocessor, metadata)


def _shards(folder: Path, index_file: Path) -> list[Path]:
    """The weight files a sharded checkpoint's index names (its `weight_map`: tensor name
    -> file), each inside the checkpoint's folder."""
    weight_map = _read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and v for v in weight_map.values()):
        raise CheckpointError(f"{index_file}: its weight_map must map each tensor name to a "
                              "file name", "the index of a sharded checkpoint is "
                              '{"weight_map": {"name": "model-00001-of-00002.safetensors", ...}}')
    files = []
    for name in sorted(set(weight_map.values())):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{index_file} names the shard '{name}' outside its folder; "
                                  "it is not read", "keep the shards beside the index")
        files.append(folder / name)
    return files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, "JSON file")
    except VitedgeError as exc:
        raise CheckpointError(exc.message, exc.hint) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        require_regular_file(path, "checkpoint file")
    except VitedgeError as exc:
        raise CheckpointError(exc.message, exc.hint) from exc
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty", "give the checkpoint file itself")
    if path.suffix == ".safetensors" or (
        path.suffix not in TORCH_SUFFIXES and _looks_like_safetensors(path)
    ):
        return _read_safetensors(path)
    return _read_torch(path), {}


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def _read_torch(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols of garbage
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the class or function a pickle wants to run ("... GLOBAL os.system");
        # random bytes or a plain pickle fail on an opcode instead
        if "GLOBAL" in str(exc):
            raise CheckpointError(
                f"{path} holds Python objects that load only by running code from the file; "
                "vitedge refuses to unpickle it",
                "in a trusted environment re-save just the weights: "
                "torch.save(model.state_dict(), ...) or safetensors",
            ) from exc
        raise _not_a_checkpoint(path) from exc
    except Exception as exc:  # noqa: BLE001 - garbage bytes fail inside torch in many ways
        raise _not_a_checkpoint(path) from exc
    return _unwrap(obj, path)


def _not_a_checkpoint(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a checkpoint vitedge can read",
        "expected .safetensors, a PyTorch state dict (.pth/.pt/.bin) or a model folder",
    )


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside {'model': ...}, {'state_dict': ...} and similar."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            break
        obj = inner
    raise CheckpointError(
        f"{path} holds no tensors",
        "expected a state dict, optionally wrapped as {'model': ...} or {'state_dict': ...}",
    )


def _finish(
    tensors: dict[str, Any],
    files: list[Path],
    config: dict[str, Any] | None = None,
    preprocessor: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> RawCheckpoint:
    for prefix in WRAPPER_PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    dtypes = {v.dtype for v in tensors.values() if v.is_floating_point()}
    stored = str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else "mixed"
    converted = {
        k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }
    return RawCheckpoint(converted, files, config, preprocessor, metadata or {}, stored)
