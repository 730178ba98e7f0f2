"""Zero-shot classification heads for CLIP and SigLIP image towers (`vitedge export
--zero-shot labels.txt`): the class names, put in prompts ("a photo of a {}."), become text
embeddings once, at export time, and those become the classifier of the exported graph:

    logits = scale * normalize(image_embedding) @ normalize(text_embeddings).T + bias

with the checkpoint's own logit scale (CLIP: softmax over the classes) and bias (SigLIP:
an independent sigmoid per class). The exported model is then an ordinary classifier with
labels for every later stage (quantize, build, eval, explain, serve).

Text embeddings come from the checkpoint's own text tower with Hugging Face transformers
(a full CLIPModel / SiglipModel folder with its tokenizer), or from a given .npy (C, E) for
an image tower alone (timm's), with the scale and bias given too."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import MissingDependency, VitedgeError

CLIP_LOGIT_SCALE = 100.0
"""exp(4.6052): the value OpenAI CLIP's learned logit scale is clamped to, and ends at."""
DEFAULT_PROMPT = "a photo of a {}."


@dataclass
class ZeroShotHead:
    weight: np.ndarray
    """(classes, embedding): the logit scale times the L2-normalised text embeddings."""
    bias: np.ndarray
    score: str
    """softmax (CLIP) or sigmoid (SigLIP)."""
    labels: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    """How the head was made, for the manifest: prompts, scale, bias, text tower."""


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_head(checkpoint: str | Path, family: str, labels: list[str],
                   prompts: tuple[str, ...] = (DEFAULT_PROMPT,),
                   embeddings: str | Path | None = None, logit_scale: float | None = None,
                   logit_bias: float | None = None) -> ZeroShotHead:
    """The head for `labels` on the image tower of `checkpoint` (`family`: clip or siglip).
    Several prompts are averaged per class (prompt ensembling, as CLIP's paper does)."""
    if not labels:
        raise VitedgeError("the zero-shot labels file has no class names")
    sigmoid = family == "siglip"
    if embeddings is not None:
        text = _embeddings_file(embeddings, len(labels))
        if sigmoid and (logit_scale is None or logit_bias is None):
            raise VitedgeError("a SigLIP head from given text embeddings needs the model's "
                               "--logit-scale and --logit-bias", "read them from its text "
                               "tower (SiglipModel: logit_scale.exp(), logit_bias)")
        scale = float(logit_scale if logit_scale is not None else CLIP_LOGIT_SCALE)
        bias = float(logit_bias or 0.0)
        source: dict[str, Any] = {"text_embeddings": Path(embeddings).name}
    else:
        text, scale, bias, source = _from_text_tower(Path(checkpoint), family, labels, prompts)
        scale = float(logit_scale) if logit_scale is not None else scale
        bias = float(logit_bias) if logit_bias is not None else bias
    weight = (np.float32(scale) * _normalized(text.astype(np.float32))).astype(np.float32)
    return ZeroShotHead(weight, np.full(len(labels), bias, np.float32),
                        "sigmoid" if sigmoid else "softmax", list(labels),
                        {**source, "zero_shot": True, "logit_scale": scale, "logit_bias": bias,
                         "score": "sigmoid" if sigmoid else "softmax"})


def _embeddings_file(path: str | Path, classes: int) -> np.ndarray:
    from vitedge.inputs import require_regular_file

    p = require_regular_file(path, "text embeddings file (.npy)")
    from vitedge.datasets import load_array

    try:
        text = load_array(p)
    except (ValueError, OSError) as exc:
        raise VitedgeError(f"{p} is not a .npy array: {exc}") from exc
    if text.ndim != 2 or text.shape[0] != classes or not np.issubdtype(text.dtype, np.floating):
        raise VitedgeError(f"{p} holds {text.dtype} {text.shape}; a zero-shot head needs "
                           f"({classes}, embedding size) floats, one row per label")
    if not np.isfinite(text).all() or not (np.linalg.norm(text, axis=1) > 0).all():
        raise VitedgeError(f"{p} has rows that are zero, NaN or infinite")
    return text


def _from_text_tower(folder: Path, family: str, labels: list[str], prompts: tuple[str, ...]
                     ) -> tuple[np.ndarray, float, float, dict[str, Any]]:
    """Text embeddings of every prompt of every label from the checkpoint's own text tower,
    averaged per label over the prompts; the model's logit scale and bias."""
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise VitedgeError(f"{folder} is not a Hugging Face model folder with a text tower",
                           "give the full CLIPModel / SiglipModel folder, or "
                           "--zero-shot-embeddings TEXT.npy")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependency("computing zero-shot text embeddings needs transformers",
                                "pip install transformers, or give --zero-shot-embeddings") from exc
    from vitedge.inputs import read_json

    model_type = read_json(folder / "config.json", "config.json").get("model_type")
    classes = {"clip": "CLIPModel", "siglip": "SiglipModel"}
    if model_type not in classes or model_type != family:
        raise VitedgeError(f"{folder}/config.json is a '{model_type}' model, not a full "
                           f"{family.upper()} model with its text tower",
                           "give the two-tower checkpoint, or --zero-shot-embeddings TEXT.npy")
    try:
        with _quiet(transformers):  # vitedge's bar says what is going on; not transformers'
            model = getattr(transformers, classes[family]).from_pretrained(folder).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise VitedgeError(f"transformers cannot load the text tower or tokenizer of {folder}: "
                           f"{str(exc).splitlines()[0]}",
                           "the folder needs its tokenizer files; or --zero-shot-embeddings") from exc
    texts = [prompt.format(label) for label in labels for prompt in prompts]
    # SigLIP was trained on text padded to its full length (transformers' docs say so)
    padding: Any = "max_length" if family == "siglip" else True
    wanted = ("input_ids",) if family == "siglip" else ("input_ids", "attention_mask")
    with torch.no_grad():
        tokens = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        out = model.get_text_features(**{k: v for k, v in tokens.items() if k in wanted})
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        scale = float(model.logit_scale.exp())
        bias = float(model.logit_bias) if family == "siglip" else 0.0
    per_prompt = _normalized(features.float().numpy()).reshape(len(labels), len(prompts), -1)
    text = per_prompt.mean(axis=1)
    return text, scale, bias, {"prompts": list(prompts), "text_tower": model_type,
                               "transformers": transformers.__version__}


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") and info lines off while it
    loads, as they were after."""
    log = transformers.utils.logging
    bars, level = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def tower_family(config: Any) -> str:
    """clip or siglip: which kind of image tower `config` (a ViTConfig) is, or one
    VitedgeError when it is neither (zero-shot heads need a tower trained with text)."""
    if config.global_pool == "map" and not config.class_token:
        return "siglip"
    if config.pre_norm and config.class_token:
        return "clip"
    raise VitedgeError("--zero-shot needs a CLIP or SigLIP image tower (trained with a text "
                       "tower); this checkpoint is neither",
                       "export it as a classifier or as an embedding model")


def with_zero_shot_head(imported: Any, head: ZeroShotHead) -> Any:
    """The imported image tower (`vitedge.model.importer.ImportedViT`) with `head` as its
    classifier: the pooled, projected embedding L2-normalised, then the text embeddings.
    A timm CLIP tower that keeps OpenAI's projection as its head (bias zero) has it moved
    to the projection first."""
    import torch

    from vitedge.model.importer import load_weights_strict
    from vitedge.model.vit import VisionTransformer

    cfg = imported.config
    weights = dict(imported.model.state_dict())
    if cfg.num_classes:
        bias = weights.get("head.bias")
        if cfg.embed_proj or bias is None or float(bias.abs().max()) > 1e-6:
            raise VitedgeError("this tower already has a classification head",
                               "export its headless checkpoint (num_classes=0) for --zero-shot")
        weights["embed_proj.weight"] = weights.pop("head.weight")
        weights.pop("head.bias")
        cfg = cfg.replace(embed_proj=cfg.num_classes, num_classes=0)
    if head.weight.shape[1] != cfg.feature_dim:
        raise VitedgeError(f"the text embeddings have {head.weight.shape[1]} values and the image "
                           f"embeddings {cfg.feature_dim}: they are not of one model")
    cfg = cfg.replace(num_classes=len(head.labels), head_l2norm=True)
    weights["head.weight"] = torch.from_numpy(head.weight)
    weights["head.bias"] = torch.from_numpy(head.bias)
    model = VisionTransformer(cfg)
    load_weights_strict(model, weights)
    imported.model, imported.config = model.eval(), cfg
    imported.labels, imported.score = head.labels, head.score
    imported.source = {**imported.source, **head.source}
    return imported
