"""Where images come from for calibration and evaluation: image folders (recursive, class
sub-folders allowed), text files listing images, videos, and arrays of preprocessed
tensors. Every image goes through the runtime's own preprocessing
(`vitedge.runtime.preprocess`), so calibration sees the pixels inference will see."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError, require
from vitedge.fileio import sha256_file
from vitedge.manifest import Manifest
from vitedge.runtime.patchify import patches_from_images
from vitedge.runtime.preprocess import load_image, model_input
from vitedge.runtime.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES

ARRAY_SUFFIXES = {".npy", ".npz"}
LIST_SUFFIXES = {".txt", ".lst"}
MAX_BROKEN_FRACTION = 0.1
"""More than this share of unreadable images (and more than 2) ends the run."""


@dataclass
class ImageSource:
    """A chosen set of inputs. `fingerprint` changes when any chosen input's bytes change."""

    path: Path
    kind: str
    items: list[Path] = field(default_factory=list)
    fingerprint: str = ""
    broken: list[str] = field(default_factory=list)
    count: int = 0
    rows: list[int] | None = None
    """For an array: the rows chosen (None: the first `count`)."""

    def describe(self) -> str:
        return f"{self.count} {'frames' if self.kind == 'video' else 'images'} from {self.kind} {self.path}"


def image_source(path: str | Path, limit: int | None = None, seed: int = 0) -> ImageSource:
    """Find the inputs in SOURCE; with `limit`, a seeded sample of that many (spread over
    all class folders rather than the first ones in name order)."""
    p = Path(path)
    if not p.exists():
        raise VitedgeError(f"no such file or folder: {p}")
    if p.is_dir():
        items = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not items:
            raise VitedgeError(f"{p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return _file_source(p, "folder", _sample(items, limit, seed))
    suffix = p.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return _file_source(p, "list", _sample(_read_list(p), limit, seed))
    if suffix in ARRAY_SUFFIXES:
        n = len(_read_array(p))
        return ImageSource(p, "array", fingerprint=_digest([sha256_file(p), str(limit)]),
                           count=min(n, limit or n))
    if suffix in VIDEO_SUFFIXES:
        frames = _video_frame_count(p)
        return ImageSource(p, "video", fingerprint=_digest([sha256_file(p), str(limit)]),
                           count=min(frames, limit or frames))
    raise VitedgeError(f"{p} is not an image folder, image list (.txt), video or .npy/.npz",
                       "give a folder of images, a text file of image paths, a video or an array")


HELD_OUT_SHARE = 4
"""At most a quarter of a source is held out for verification."""


def split_source(path: str | Path, held_out: int, limit: int | None = None, seed: int = 0
                 ) -> tuple[ImageSource, ImageSource | None]:
    """(calibration part, held-out part) of SOURCE: `held_out` inputs (a seeded sample, at
    most a quarter of the source) kept apart for verifying the built model, then up to
    `limit` of the rest, as `image_source` samples them. A video is not split (None)."""
    whole = image_source(path, None, seed)
    total = len(whole.items) if whole.kind in ("folder", "list") else (
        whole.count if whole.kind == "array" else 0)
    keep = min(held_out, total // HELD_OUT_SHARE)
    if keep < 1:
        return (whole if limit is None or whole.count <= limit else image_source(path, limit, seed)), None
    order = np.random.default_rng(seed + 1).permutation(total)
    verify, rest = sorted(order[:keep].tolist()), sorted(order[keep:].tolist())
    rest = [rest[i] for i in sorted(np.random.default_rng(seed).choice(
        len(rest), size=limit, replace=False))] if limit is not None and len(rest) > limit else rest
    if whole.kind == "array":
        p = Path(path)
        digest = sha256_file(p)
        return (_array_source(p, digest, rest), _array_source(p, digest, verify))
    return (_file_source(whole.path, whole.kind, [whole.items[i] for i in rest]),
            _file_source(whole.path, whole.kind, [whole.items[i] for i in verify]))


def _array_source(path: Path, digest: str, rows: list[int]) -> ImageSource:
    return ImageSource(path, "array", fingerprint=_digest([digest, *map(str, rows)]),
                       count=len(rows), rows=rows)


def _file_source(root: Path, kind: str, items: list[Path]) -> ImageSource:
    digest = hashlib.sha256()
    for f in items:
        digest.update(f.name.encode())
        digest.update(sha256_file(f).encode() if f.is_file() else b"missing")
    return ImageSource(root, kind, items, digest.hexdigest(), count=len(items))


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _sample(items: list[Path], limit: int | None, seed: int) -> list[Path]:
    if limit is None or len(items) <= limit:
        return items
    pick = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(pick)]


def _read_list(path: Path) -> list[Path]:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    items = [Path(ln) if Path(ln).is_absolute() else path.parent / ln
             for ln in lines if ln and not ln.startswith("#")]
    if not items:
        raise VitedgeError(f"{path} lists no images", "one image path per line")
    return items


def load_array(path: Path) -> Any:
    """np.load of a .npy / .npz, each array's header checked against the bytes the file
    holds first: a header that claims 10^9 images of a small file is refused, not
    allocated."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    _check_header(path, f, info.file_size, info.filename)
    else:
        with open(path, "rb") as f:
            _check_header(path, f, path.stat().st_size, None)
    return np.load(path, allow_pickle=False)


def _check_header(path: Path, f: Any, size: int, member: str | None) -> None:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        shape, _order, dtype = (fmt.read_array_header_1_0(f) if version == (1, 0)
                                else fmt.read_array_header_2_0(f))
    except (ValueError, OSError) as exc:
        raise VitedgeError(f"cannot read {path} as a NumPy array: {exc}") from exc
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = size - f.tell()
    if need > have:
        where = f" ({member})" if member else ""
        raise VitedgeError(f"{path}{where} claims an array of shape {shape} ({need / 1e9:.1f} GB) "
                           f"but holds {have / 1e6:.1f} MB: its header is wrong",
                           "write it again with numpy.save")


def _read_array(path: Path) -> np.ndarray:
    try:
        data = load_array(path)
        if isinstance(data, np.lib.npyio.NpzFile):
            key = "images" if "images" in data.files else data.files[0] if data.files else None
            if key is None:
                raise VitedgeError(f"{path} holds no arrays")
            data = data[key]
    except (OSError, ValueError) as exc:
        raise VitedgeError(f"cannot read {path} as a NumPy array: {exc}") from exc
    if data.ndim not in (3, 4) or not np.issubdtype(data.dtype, np.floating):
        raise VitedgeError(f"{path} holds a {data.dtype} array of shape {data.shape}",
                           "expected preprocessed float tensors (N, C, H, W) or patches (N, T, C*P*P)")
    if not len(data):
        raise VitedgeError(f"{path} holds no inputs (its first dimension is 0)")
    bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1)
    if bad.any():
        raise VitedgeError(f"{path}: {int(bad.sum())} of its {len(data)} inputs hold NaN or "
                           f"infinite values (the first is input {int(np.argmax(bad))})",
                           "preprocessed inputs must be finite numbers")
    return data


def _video_frame_count(path: Path) -> int:
    cv2 = require("cv2", "video", "reading video")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VitedgeError(f"cannot open video {path}")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if n <= 0:
        raise VitedgeError(f"video {path} has no frames")
    return n


def model_inputs(source: ImageSource, manifest: Manifest,
                 on_broken: Callable[[str], None] | None = None) -> Iterator[np.ndarray]:
    """One model input (C, H, W), or (T, C*P*P) for a patch-input model, per source item.

    Unreadable images are skipped and reported through `on_broken`; too many end the run.
    """
    cfg = manifest.architecture
    want = (cfg.in_chans, *cfg.img_size)

    def shaped(x: np.ndarray) -> np.ndarray:
        if manifest.input == "patches":
            return patches_from_images(x[None], cfg.patch_size)[0]
        return x

    if source.kind == "array":
        if manifest.input in ("frames", "pixels"):
            raise VitedgeError(f"a {manifest.input} model (raw pixel input) calibrates from "
                               "images or video, not from arrays of preprocessed tensors")
        data = _read_array(source.path)
        expected = (cfg.num_patches, cfg.patch_dim) if manifest.input == "patches" else want
        if data.ndim == 4 and manifest.input == "patches" and data.shape[1:] == want:
            expected = want
        if tuple(data.shape[1:]) != tuple(expected):
            raise VitedgeError(f"{source.path} holds inputs of shape {tuple(data.shape[1:])}; "
                               f"this model takes {tuple(expected)}")
        for x in (data[source.rows] if source.rows is not None else data[:source.count]):
            x = np.asarray(x, np.float32)
            yield shaped(x) if x.shape == want else x
        return
    if source.kind == "video":
        for frame in _video_frames(source.path, source.count):
            yield model_input(frame, manifest)
        return
    for i, item in enumerate(source.items):
        try:
            x = model_input(load_image(item), manifest)
        except VitedgeError as exc:
            source.broken.append(str(item))
            if on_broken:
                on_broken(f"skipped: {exc}")
            if len(source.broken) > 2 and len(source.broken) > MAX_BROKEN_FRACTION * (i + 1):
                raise VitedgeError(
                    f"{len(source.broken)} of the first {i + 1} images in {source.path} cannot "
                    f"be read (first: {source.broken[0]})", "check the files") from exc
            continue
        yield x


def _video_frames(path: Path, count: int) -> Iterator[Any]:
    """`count` frames spread evenly over the video, as RGB PIL images."""
    cv2 = require("cv2", "video", "reading video")
    from PIL import Image

    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
    try:
        index = 0
        while wanted:
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                wanted.discard(index)
                yield Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()


def batches(inputs: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Stack consecutive inputs into batches of `size` (the last one may be smaller)."""
    chunk: list[np.ndarray] = []
    for x in inputs:
        chunk.append(x)
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


# --- labelled folders (evaluation) -----------------------------------------------------

def label_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclass
class LabelledImages:
    items: list[tuple[Path, int]]
    classes: dict[str, int]


def labelled_folder(folder: str | Path, labels: list[str] | None,
                    limit: int | None = None, seed: int = 0) -> LabelledImages:
    """Images in class sub-folders, each folder matched to one of the model's labels
    (case, spaces and punctuation ignored: `ankle-boot` is "Ankle boot"), or to a class
    index when the folder is named by a number."""
    root = Path(folder)
    if not root.is_dir():
        raise VitedgeError(f"{root} is not a folder", "give a folder with one sub-folder per class")
    if not labels:
        raise VitedgeError("the model has no labels to match class folders against",
                           "export it with --labels")
    keys = {label_key(lab): i for i, lab in enumerate(labels)}
    classes: dict[str, int] = {}
    unknown: list[str] = []
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        if label_key(sub.name) in keys:
            classes[sub.name] = keys[label_key(sub.name)]
        elif sub.name.isdigit() and int(sub.name) < len(labels):
            classes[sub.name] = int(sub.name)
        else:
            unknown.append(sub.name)
    if unknown:
        raise VitedgeError(
            f"class folder(s) {', '.join(unknown[:5])} in {root} match none of the model's "
            f"{len(labels)} labels", f"labels are: {', '.join(labels[:12])}")
    if not classes:
        raise VitedgeError(f"{root} has no class sub-folders", "put each class's images in a "
                           "folder named after its label")
    items = [(f, classes[name]) for name in classes for f in sorted((root / name).rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not items:
        raise VitedgeError(f"the class folders in {root} hold no images")
    if limit is not None and len(items) > limit:
        pick = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
        items = [items[i] for i in sorted(pick)]
    return LabelledImages(items, classes)
