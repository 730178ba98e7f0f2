"""Checkpoint to a ready PyTorch ViT with its preprocessing and labels: the first step of
every vitedge command that starts from training output."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitedge.architecture import ViTConfig
from vitedge.errors import CheckpointError, VitedgeError
from vitedge.fileio import sha256_files
from vitedge.manifest import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    Manifest,
    Preprocess,
)
from vitedge.model import formats
from vitedge.model.archs import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, find_arch
from vitedge.model.checkpoint import RawCheckpoint, read_checkpoint
from vitedge.model.vit import VisionTransformer, resample_pos_embed
from vitedge.options import ImportOptions

log = logging.getLogger("vitedge")
MAX_LISTED = 10
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass
class ImportedViT:
    model: VisionTransformer
    config: ViTConfig
    preprocess: Preprocess
    labels: list[str] | None
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    score: str = "softmax"
    """How class scores come from the logits (sigmoid for a SigLIP zero-shot head)."""

    def manifest(self, input_kind: str = "images") -> Manifest:
        return Manifest(
            architecture=self.config,
            preprocess=self.preprocess,
            labels=self.labels,
            input=input_kind,
            source=self.source,
            score=self.score,
        )


def load_checkpoint(path: str | Path, options: ImportOptions | None = None) -> ImportedViT:
    """Read a timm, Hugging Face, torchvision or vitedge checkpoint into a VisionTransformer."""
    opts = options or ImportOptions()
    raw = read_checkpoint(path)
    fmt = formats.detect_format(raw.tensors, raw.metadata)
    notes: list[str] = []
    try:
        tensors, config, preprocess, labels = _convert(fmt, raw, opts, notes)
    except VitedgeError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError, RecursionError) as exc:
        # the checkpoint's config.json / preprocessor_config.json / metadata is user data:
        # a field of the wrong type, zero or missing is its fault, said in one line
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: its configuration cannot be read ({what})",
                              "check config.json / preprocessor_config.json, or pass --arch") from exc

    if opts.num_heads is not None and opts.num_heads != config.num_heads:
        config = config.replace(num_heads=opts.num_heads)
    if opts.img_size is not None:
        size = (opts.img_size, opts.img_size) if isinstance(opts.img_size, int) else opts.img_size
        if tuple(size) != config.img_size:
            notes.append(f"position embeddings resampled from {config.img_size[0]}x"
                         f"{config.img_size[1]} to {size[0]}x{size[1]}")
            config = config.replace(img_size=tuple(size))
            preprocess = preprocess.with_size(config.img_size)
    model_type = str(formats.vision_config(raw.config or {}).get("model_type", ""))
    antialias = fmt in ("timm", "vitedge") or model_type == "dinov2_with_registers"
    tensors = _fit_pos_embed(tensors, config, antialias)
    tensors = formats.fit_to_config(tensors, config)

    model = VisionTransformer(config)
    load_weights_strict(model, tensors)
    model.eval()
    if opts.labels is not None:
        labels = read_labels(opts.labels)
    if labels is not None and config.num_classes and len(labels) != config.num_classes:
        raise VitedgeError(
            f"{len(labels)} labels for a model with {config.num_classes} classes",
            "give one label per class, in class-index order",
        )
    source = {
        "format": fmt,
        "file": str(Path(path).name),
        "sha256": sha256_files(raw.files),
        "stored_dtype": raw.stored_dtype,
    }
    return ImportedViT(model, config, preprocess, labels, source, notes)


def without_head(imported: ImportedViT) -> ImportedViT:
    """A classifier without its classification head (and its labels): the model then
    outputs the features the head read, an embedding for retrieval or few-shot use."""
    from dataclasses import replace

    if imported.config.num_classes == 0:
        return replace(imported, notes=[*imported.notes, "--no-head: the checkpoint has no "
                                        "classification head; it already outputs features"])
    config = imported.config.replace(num_classes=0)
    model = VisionTransformer(config)
    kept = {k: v for k, v in imported.model.state_dict().items() if k in model.state_dict()}
    load_weights_strict(model, kept)
    model.eval()
    return replace(imported, model=model, config=config, labels=None, score="softmax",
                   notes=[*imported.notes, f"the {imported.config.num_classes}-class head was "
                          f"left out: the model outputs its {config.feature_dim}-float features"])


def with_merge(imported: ImportedViT, schedule: tuple[int, ...]) -> ImportedViT:
    """The model with token merging (ToMe) at `schedule` (tokens merged per block,
    `vitedge.architecture.merge_schedule`); the weights are unchanged."""
    from dataclasses import replace

    config = imported.config.replace(merge=schedule)
    model = VisionTransformer(config)
    load_weights_strict(model, dict(imported.model.state_dict()))
    model.eval()
    return replace(imported, model=model, config=config)


def _convert(
    fmt: str, raw: RawCheckpoint, opts: ImportOptions, notes: list[str]
) -> tuple[formats.Tensors, ViTConfig, Preprocess, list[str] | None]:
    if fmt == "vitedge":
        manifest = Manifest.from_json(raw.metadata[formats.NATIVE_METADATA_KEY])
        return raw.tensors, manifest.architecture, manifest.preprocess, manifest.labels
    if fmt == "hf":
        tensors = formats.timm_layout_from_hf(raw.tensors)
        if raw.config is not None:
            config = formats.config_from_hf(raw.config, tensors)
        else:
            config = _config_without_file(tensors, opts, notes, norm_eps=1e-12, hf=True)
        return tensors, config, _hf_preprocess(raw, config, notes), _hf_labels(raw.config)
    if fmt in ("hf-clip", "hf-siglip"):
        tensors = formats.timm_layout_from_hf_tower(raw.tensors)
        if raw.config is None:
            raise CheckpointError(f"a Hugging Face {fmt[3:].upper()} checkpoint needs its config.json",
                                  "give the model folder (config.json beside the weights)")
        config = formats.config_from_hf_tower(raw.config, tensors, fmt)
        return tensors, config, _hf_preprocess(raw, config, notes), None
    if fmt == "torchvision":
        tensors = formats.timm_layout_from_torchvision(raw.tensors)
        config = _config_without_file(tensors, opts, notes)
        prep = Preprocess.from_crop_pct(config.img_size, 224 / 256, "bilinear",
                                        IMAGENET_MEAN, IMAGENET_STD)
        return tensors, config, prep, None
    tensors = formats.timm_layout_from_timm(raw.tensors)
    if raw.config is not None and "architecture" in raw.config:
        config, prep = _timm_hub_config(raw.config, tensors)
        labels = raw.config.get("label_names") or raw.config.get("pretrained_cfg", {}).get(
            "label_names")
        return tensors, config, prep, list(labels) if labels else None
    config = _config_without_file(tensors, opts, notes)
    if opts.arch:
        prep = find_arch(opts.arch).preprocess.with_size(config.img_size)
    else:
        prep = Preprocess.from_crop_pct(config.img_size, 0.9, "bicubic", INCEPTION_MEAN,
                                        INCEPTION_STD)
        notes.append("no preprocessing in the checkpoint: timm's ViT defaults assumed "
                     "(mean/std 0.5, crop 0.9, bicubic)")
    return tensors, config, prep, None


def _config_without_file(
    tensors: formats.Tensors, opts: ImportOptions, notes: list[str], norm_eps: float = 1e-6,
    hf: bool = False,
) -> ViTConfig:
    """The architecture of a bare state dict: `--arch`, else shapes plus `--num-heads`
    (`hf`: Hugging Face weights, whose config.json says it all; no timm name is offered)."""
    grid_prefix = int("cls_token" in tensors) + int("dist_token" in tensors) + (
        tensors["reg_token"].shape[1] if "reg_token" in tensors else 0)
    if opts.arch:
        named = find_arch(opts.arch)
        config = formats.config_from_timm_args(named.args, named.distilled, named.layout,
                                               named.norm_eps)
        _, grid = formats.pos_embed_grid(tensors, grid_prefix)
        depth = formats.count_blocks(tensors)
        if depth != config.depth:
            notes.append(f"{depth} blocks in the weights ({named.name} has {config.depth})")
        return config.replace(
            depth=depth,
            num_classes=tensors["head.weight"].shape[0] if "head.weight" in tensors else 0,
            img_size=(grid[0] * config.patch_size, grid[1] * config.patch_size),
            fused_qkv="blocks.0.attn.qkv.weight" in tensors,
        )
    if opts.num_heads is None:
        dim = tensors["patch_embed.proj.weight"].shape[0]
        usual = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16}.get(dim)
        hint = f"--num-heads {usual} is usual for embed dim {dim}; " if usual else ""
        if hf:
            raise CheckpointError(
                "Hugging Face ViT weights without their config.json: the number of attention "
                "heads (and the labels) cannot be read from the weights",
                f"put its config.json beside the weights, or {hint}pass --num-heads N")
        raise CheckpointError(
            "the number of attention heads cannot be read from the weights",
            f"{hint}pass --num-heads N or --arch NAME (e.g. vit_small_patch16_224)",
        )
    return formats.config_from_shapes(tensors, opts.num_heads, norm_eps)


def _timm_hub_config(cfg: dict[str, Any], tensors: formats.Tensors) -> tuple[ViTConfig, Preprocess]:
    named = find_arch(cfg["architecture"])
    args = dict(named.args)
    args.update(cfg.get("model_args") or {})
    for key in ("num_classes", "global_pool"):
        if key in cfg:
            args[key] = cfg[key]
    config = formats.config_from_timm_args(args, named.distilled, named.layout, named.norm_eps)
    config = config.replace(fused_qkv="blocks.0.attn.qkv.weight" in tensors)
    pc = cfg.get("pretrained_cfg") or {}
    prep = named.preprocess.with_size(config.img_size)
    if pc:
        size = tuple(pc.get("input_size", (3, *config.img_size))[-2:])
        prep = Preprocess.from_crop_pct(
            (int(size[0]), int(size[1])),
            float(pc.get("crop_pct", prep.fraction())),
            pc.get("interpolation", prep.interpolation),
            tuple(pc.get("mean", prep.mean)),
            tuple(pc.get("std", prep.std)),
        )
        if prep.crop != config.img_size:
            prep = prep.with_size(config.img_size)
    return config, prep


HF_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {"size": None, "do_center_crop": False, "resample": 2},
    "deit": {"size": {"height": 256, "width": 256}, "do_center_crop": True, "resample": 3,
             "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD},
    "dinov2": {"size": {"shortest_edge": 256}, "do_center_crop": True, "resample": 3,
               "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD},
    "clip": {"size": "shortest", "do_center_crop": True, "resample": 3,
             "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD},
    "siglip": {"size": None, "do_center_crop": False, "resample": 3},
}
"""What each family's image processor does when the checkpoint has no
preprocessor_config.json (the processors' own defaults, and DINOv2's hub files')."""


def _hf_preprocess(raw: RawCheckpoint, config: ViTConfig, notes: list[str] | None = None
                   ) -> Preprocess:
    model_type = str(formats.vision_config(raw.config or {}).get("model_type", "vit"))
    family = next((f for f in ("dinov2", "clip", "siglip", "deit") if model_type.startswith(f)),
                  "vit")
    p = {**HF_PROCESSOR_DEFAULTS[family], **(raw.preprocessor or {})}
    mean = tuple(p.get("image_mean", INCEPTION_MEAN))
    std = tuple(p.get("image_std", INCEPTION_STD))
    if p.get("do_normalize") is False:
        mean, std = (0.0,) * len(mean), (1.0,) * len(std)
    interp = PIL_RESAMPLE.get(int(p.get("resample", 2)), "bilinear")
    size = p.get("size")
    if size == "shortest":
        size = {"shortest_edge": config.img_size[0]}
    do_crop = p.get("do_center_crop", False)
    crop_size = p.get("crop_size", {"height": config.img_size[0], "width": config.img_size[1]})
    if isinstance(crop_size, int):
        crop_size = {"height": crop_size, "width": crop_size}
    crop = (int(crop_size["height"]), int(crop_size["width"])) if do_crop else config.img_size
    if isinstance(size, dict) and "shortest_edge" in size:
        resize, mode = (int(size["shortest_edge"]),) * 2, "shorter"
    elif isinstance(size, dict):
        resize, mode = (int(size["height"]), int(size["width"])), "exact"
    else:
        resize, mode = config.img_size, "exact"
    if not do_crop:
        crop = resize if mode == "exact" else config.img_size
    prep = Preprocess(crop=crop, resize=(resize[0], resize[1]), resize_mode=mode,
                      interpolation=interp, mean=mean, std=std, crop_offset="floor")
    if prep.crop == config.img_size:
        return prep
    if notes is not None and raw.preprocessor:
        notes.append(f"preprocessor_config.json makes {prep.crop[0]}x{prep.crop[1]} inputs but "
                     f"the model takes {config.img_size[0]}x{config.img_size[1]} (config.json): "
                     f"the preprocessing resizes to {config.img_size[0]}x{config.img_size[1]} "
                     "(--img-size resamples the model instead)")
    return prep.with_size(config.img_size)


def _hf_labels(config: dict[str, Any] | None) -> list[str] | None:
    id2label = (config or {}).get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if labels and all(lab == f"LABEL_{i}" for i, lab in enumerate(labels)):
        return None
    return labels


def _fit_pos_embed(tensors: formats.Tensors, config: ViTConfig, antialias: bool = True
                   ) -> formats.Tensors:
    pos = tensors.get("pos_embed")
    if pos is None or pos.dim() != 3 or pos.shape[1] == config.pos_embed_len:
        return tensors
    prefix = 0 if config.no_embed_class else config.num_prefix_tokens
    side = int(round((pos.shape[1] - prefix) ** 0.5))
    if side * side != pos.shape[1] - prefix:
        return tensors  # leave it to the shape check to report
    out = dict(tensors)
    out["pos_embed"] = resample_pos_embed(pos, (side, side), config.grid, prefix, antialias)
    return out


def load_weights_strict(model: torch.nn.Module, tensors: formats.Tensors) -> None:
    """Load every weight or list what does not fit: missing, unexpected, mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [
        f"{k} {_dims(tensors[k].shape)} != {_dims(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped (checkpoint != model)", misshaped)):
            if items:
                more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
                parts.append(f"{title}: {', '.join(items[:MAX_LISTED])}{more}")
        raise CheckpointError(
            "the weights do not fit the architecture; " + "; ".join(parts),
            "check --arch / --num-heads, or that this is a ViT vitedge supports",
        )
    model.load_state_dict(tensors, strict=True)


def _dims(shape: Any) -> str:
    return "x".join(str(int(s)) for s in shape) or "scalar"


def read_labels(path: str | Path) -> list[str]:
    """Labels from a text file (one per line) or JSON (a list, or {index: name})."""
    from vitedge.inputs import read_json, require_regular_file

    p = require_regular_file(path, "labels file")
    if p.suffix == ".json":
        data = read_json(p, "labels file")
        try:
            if isinstance(data, dict):
                return [str(data[k]) for k in sorted(data, key=int)]
        except (ValueError, TypeError):
            raise VitedgeError(f"labels file {p}: the keys of an object must be class "
                               "indices (\"0\", \"1\", ...)") from None
        if isinstance(data, list):
            return [str(x) for x in data]
        raise VitedgeError(f"labels file {p} must hold a list or an {{index: name}} object")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VitedgeError(f"cannot read labels file {p}: not UTF-8 text") from exc
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise VitedgeError(f"labels file {p} is empty")
    return labels
