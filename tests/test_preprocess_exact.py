"""The exact frame path computes only the pixels the centre crop keeps, by the C resampler
(runtime/resample.py) where it is built, else by Pillow in parts on two threads: both must
give the same bytes as plain Pillow (resize the whole image, pad, crop), written here as the
reference, on real photos, real video frames and synthetic sizes (odd, tiny, extreme
aspect, upscaled), every filter, both resize modes, both crop offsets, RGB and grayscale;
Pillow's path with one thread and with several."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitedge.runtime.preprocess as pre
from vitedge.manifest import Preprocess
from vitedge.runtime import resample
from vitedge.runtime.decode import decode_frame
from vitedge.runtime.preprocess import FramePixels, Preprocessor, crop_pixels, normalize

PHOTOS = Path(__file__).parents[1] / "vitedge" / "data" / "photos"
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
POOL = ThreadPoolExecutor(2, thread_name_prefix="test-resize")


def plain_pillow(image: Image.Image, prep: Preprocess) -> np.ndarray:
    """The reference: torchvision's Resize + CenterCrop (resize_mode "shorter", offset
    "round") or Hugging Face's resize + centre crop ("exact", "floor"), in plain Pillow."""
    image = image.convert("L" if len(prep.mean) == 1 else "RGB")
    w, h = image.size
    if prep.resize_mode == "shorter":
        short = prep.resize[0]
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    else:
        size = (prep.resize[1], prep.resize[0])
    if size != image.size:
        image = image.resize(size, FILTERS[prep.interpolation])
    ch, cw = prep.crop
    w, h = image.size
    if w < cw or h < ch:
        canvas = Image.new(image.mode, (max(w, cw), max(h, ch)))
        canvas.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        image, (w, h) = canvas, canvas.size
    if prep.crop_offset == "floor":
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + cw, top + ch)))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def recipes(sizes: list[tuple[tuple[int, int], tuple[int, int]]]) -> list[Preprocess]:
    """Every filter, resize mode, crop offset and channel count for each (crop, resize)."""
    out = []
    for (crop, resize), interpolation, mode, offset, gray in itertools.product(
            sizes, FILTERS, ("shorter", "exact"), ("round", "floor"), (False, True)):
        mean = (0.5,) if gray else (0.485, 0.456, 0.406)
        std = (0.25,) if gray else (0.229, 0.224, 0.225)
        out.append(Preprocess(crop=crop, resize=resize, resize_mode=mode,
                              interpolation=interpolation, crop_offset=offset,
                              mean=mean, std=std))
    return out


def video_frames() -> list[Image.Image]:
    if not VIDEO.is_file():
        return []
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(VIDEO))
    frames = []
    for _ in range(2):
        ok, frame = capture.read()
        if ok:
            frames.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    capture.release()
    return frames


def synthetic(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


@pytest.fixture(params=[1, 3], ids=["1 thread", "3 threads"])
def threads(request, monkeypatch):
    """Pillow's path (the C resampler off), its parts run on this many threads (a pool of
    two helpers, so 3 also runs where the machine has fewer cores), cut as small as the
    image allows; the default (two threads where two cores are free) runs in
    `test_the_frame_path_gives_the_reference_input`."""
    monkeypatch.setattr(resample, "library", lambda: None)
    monkeypatch.setattr(pre, "preprocess_threads", lambda: request.param)
    monkeypatch.setattr(pre, "MIN_STRIP_PIXELS", 1)
    monkeypatch.setattr(pre, "_pool", lambda: POOL)
    return request.param


@pytest.fixture(params=["native", 1, 3], ids=["C resampler", "Pillow 1 thread",
                                               "Pillow 3 threads"])
def engine(request, monkeypatch):
    """The C resampler (where it is built: `pip install` builds it where a C compiler is),
    or Pillow's path on 1 or 3 threads (see `threads`)."""
    if request.param == "native":
        if resample.library() is None:
            pytest.skip("the C resampler is not built here (no C compiler when vitedge was "
                        "installed): Pillow's path is the one used, tested beside")
        return "native"
    monkeypatch.setattr(resample, "library", lambda: None)
    monkeypatch.setattr(pre, "preprocess_threads", lambda: request.param)
    monkeypatch.setattr(pre, "MIN_STRIP_PIXELS", 1)
    monkeypatch.setattr(pre, "_pool", lambda: POOL)
    return request.param


def assert_same(image: Image.Image, preps: list[Preprocess]) -> None:
    for prep in preps:
        ours = crop_pixels(image, prep)
        reference = plain_pillow(image, prep)
        assert ours.shape == reference.shape and ours.dtype == np.uint8, prep
        assert np.array_equal(ours, reference), (image.size, prep)


def test_real_photos_and_video_frames_are_bit_exact(engine):
    """Model sizes of the timm (248 -> 224) and Hugging Face (224, 384) kinds, a 3:4 input,
    and crops larger than some photos' resized side (upscaled, then padded)."""
    images = [Image.open(p) for p in sorted(PHOTOS.glob("*.jpg"))] + video_frames()
    assert len(images) >= 4
    preps = recipes([((224, 224), (248, 248)), ((224, 224), (224, 224)),
                     ((384, 288), (400, 300))])
    for image in images:
        assert_same(image, preps)


@pytest.mark.parametrize("w, h", [
    (640, 480), (480, 640), (333, 251), (251, 333), (7, 5), (1, 1), (9, 40), (600, 37),
    (37, 600), (224, 224), (225, 331), (248, 300), (300, 248), (96, 64), (50, 80)])
def test_synthetic_sizes_are_bit_exact(w, h, engine):
    """Odd, tiny, extreme aspect (the vertical pass first on Pillow 13), upscaled sizes,
    and crops that need padding."""
    preps = recipes([((224, 224), (256, 256)), ((97, 223), (311, 257)), ((17, 9), (17, 9))])
    assert_same(synthetic(w, h, w * 1000 + h), preps)


@pytest.mark.parametrize("w, h", [(640, 480), (1280, 720), (1920, 1080), (800, 600),
                                  (1080, 1920)])
def test_camera_sizes_resize_only_a_window_and_stay_bit_exact(w, h, threads):
    """At the usual camera sizes the timm recipe's resize repeats every few pixels, so a pass
    resizes only a window of whole periods around what the crop keeps (a fifth to half of
    the width): the bytes are plain Pillow's for every filter, mode and offset."""
    prep = Preprocess(crop=(224, 224), resize=(248, 248))
    rw, rh = pre.resized_size(w, h, prep)
    top, left = prep.crop_box(rh, rw)
    side, size, keep = (w, rw, (left, left + 224)) if w > h else (h, rh, (top, top + 224))
    o0, o1, i0, i1 = pre._window(side, size, keep, "bicubic")
    assert o1 - o0 < size and i1 - i0 < side
    assert_same(synthetic(w, h, w + h), recipes([((224, 224), (248, 248))]))


def test_the_window_probe_sees_a_window_that_clips_the_filter():
    """A window that ends where the kept columns' filters still read (the last ones lose
    taps) is refused by reading Pillow's coefficients; the window with whole taps is kept."""
    f = Image.Resampling.BICUBIC
    assert not pre._window_is_exact(640, 330, (33, 165, 64, 320), (53, 165), f)
    assert pre._window_is_exact(640, 330, (33, 198, 64, 384), (53, 165), f)
    assert pre._window(640, 330, (53, 165), "bicubic") == (33, 198, 64, 384)


def test_the_pass_order_is_the_one_this_pillow_uses():
    """Pillow 13 resizes the height first when it shrinks by more than twice the width's
    pixels, earlier versions always the width first; `pass_order` found which by running
    Pillow, and here a whole resize decides against both orders at a size it was not
    probed at."""
    order = pre.pass_order()
    assert order is not None
    image = synthetic(480, 640, 1)
    f = Image.Resampling.BICUBIC
    for size in [(311, 257), (311, 400), (400, 257), (248, 330)]:
        whole = np.asarray(image.resize(size, f))
        first_w = np.asarray(image.resize((size[0], 640), f).resize(size, f))
        first_h = np.asarray(image.resize((480, size[1]), f).resize(size, f))
        assert not np.array_equal(first_w, first_h)
        assert np.array_equal(whole, first_w if order(480, 640, *size) else first_h)


def test_an_unknown_pass_order_falls_back_to_plain_pillow(monkeypatch):
    monkeypatch.setattr(pre, "pass_order", lambda: None)
    assert_same(synthetic(480, 640, 2), recipes([((97, 223), (311, 257))]))


def test_a_lazily_read_file_is_read_once_before_the_strips(engine):
    """An image straight from Image.open, already in the model's mode (no convert copy)."""
    photo = sorted(PHOTOS.glob("*.jpg"))[0]
    prep = Preprocess(crop=(224, 224), resize=(248, 248), interpolation="bicubic")
    with Image.open(photo) as image:
        assert image.mode == "RGB"
        ours = crop_pixels(image, prep)
    with Image.open(photo) as image:
        assert np.array_equal(ours, plain_pillow(image, prep))


def test_a_helper_thread_that_never_runs_leaves_its_strips_to_the_caller(monkeypatch):
    """A pool whose tasks never start (a machine too busy to schedule them, or a process
    forked after the pool was made): the caller takes every strip, and the bytes are the
    same."""
    class Stalled:
        def submit(self, *args):
            return None

    monkeypatch.setattr(pre, "preprocess_threads", lambda: 2)
    monkeypatch.setattr(pre, "_pool", lambda: Stalled())
    assert_same(synthetic(640, 480, 4), recipes([((224, 224), (248, 248))]))


def test_an_error_in_a_strip_reaches_the_caller(threads):
    def work(a: int, b: int) -> None:
        if b == 100:
            raise ValueError("strip failed")

    with pytest.raises(ValueError, match="strip failed"):
        pre._in_strips(work, 0, 100, 1000)


@pytest.mark.parametrize("native", [True, False], ids=["C resampler", "Pillow"])
@pytest.mark.parametrize("color", ["bgr", "rgb"])
def test_the_frame_path_gives_the_reference_input(color, native, monkeypatch):
    """What the pipeline feeds the model from a camera's BGR (or RGB) array: decode, then
    `Preprocessor`, against plain Pillow and the normalisation's own per-pixel arithmetic."""
    if native and resample.library() is None:
        pytest.skip("the C resampler is not built here (no C compiler when vitedge was "
                    "installed)")
    if not native:
        monkeypatch.setattr(resample, "library", lambda: None)
    manifest = type("M", (), {"input": "images", "preprocess": Preprocess()})()
    frame = np.asarray(synthetic(640, 480, 3))
    rgb = frame[:, :, ::-1] if color == "bgr" else frame
    decoded = decode_frame(frame, color)
    assert isinstance(decoded, FramePixels if native else Image.Image)
    x = Preprocessor(manifest)(decoded)
    crop = plain_pillow(Image.fromarray(np.ascontiguousarray(rgb)), manifest.preprocess)
    levels = crop.astype(np.float32) * np.float32(1 / 255)
    expected = ((levels - np.asarray(manifest.preprocess.mean, np.float32))
                / np.asarray(manifest.preprocess.std, np.float32)).transpose(2, 0, 1)
    assert x.dtype == np.float32 and x.shape == (3, 224, 224)
    assert np.array_equal(x, expected)
    assert np.array_equal(normalize(crop, manifest.preprocess), expected)


@pytest.mark.parametrize("w, h", [(640, 480), (1280, 720), (1920, 1080), (480, 640),
                                  (333, 251), (96, 64), (300, 1200)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_the_c_resampler_resizes_itself_at_camera_sizes(w, h, interpolation):
    """The C resampler, called directly (no fallback to Pillow can hide in it): Pillow's
    bytes for the timm recipe and an exact resize, from a camera's BGR array (the channels
    swapped while the pixels are transposed) and from grayscale; 300x1200 has Pillow 13
    resize its height first."""
    if w == 300 and pre.pass_order()(300, 1200, 311, 200):
        pytest.fail("this Pillow resizes 300x1200 -> 311x200 width first: pick another size")
    if resample.library() is None:
        pytest.skip("the C resampler is not built here (no C compiler when vitedge was "
                    "installed)")
    rgb = np.asarray(synthetic(w, h, w * 7 + h))
    for prep in (Preprocess(crop=(224, 224), resize=(248, 248), interpolation=interpolation),
                 Preprocess(crop=(200, 311), resize=(200, 311), resize_mode="exact",
                            interpolation=interpolation)):
        ours = pre.native_crop(rgb, prep)
        assert ours is not None, (w, h, prep)
        assert np.array_equal(ours, plain_pillow(Image.fromarray(rgb), prep)), (w, h, prep)
        bgr = FramePixels(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr")
        assert np.array_equal(crop_pixels(bgr, prep), ours)
        gray = Preprocess(crop=prep.crop, resize=prep.resize, resize_mode=prep.resize_mode,
                          interpolation=interpolation, mean=(0.5,), std=(0.25,))
        L = Image.fromarray(rgb).convert("L")
        ours_gray = pre.native_crop(np.asarray(L)[:, :, None], gray)
        assert ours_gray is not None
        assert np.array_equal(ours_gray, plain_pillow(L, gray))


def test_the_c_resampler_leaves_to_pillow_what_it_does_not_cover(monkeypatch):
    """NEAREST, zero padding and a side over the probe's limit: None, and the frame path
    then gives Pillow's bytes by Pillow."""
    rgb = np.asarray(synthetic(300, 200, 5))
    assert pre.native_crop(rgb, Preprocess(interpolation="nearest")) is None
    padded = Preprocess(crop=(224, 224), resize=(200, 200))  # resized to 300x200, padded
    assert pre.native_crop(rgb, padded) is None
    assert np.array_equal(crop_pixels(Image.fromarray(rgb), padded),
                          plain_pillow(Image.fromarray(rgb), padded))
    monkeypatch.setattr(resample, "PROBE_MOST", 100)
    assert pre.native_crop(rgb, Preprocess()) is None
    assert np.array_equal(crop_pixels(Image.fromarray(rgb), Preprocess()),
                          plain_pillow(Image.fromarray(rgb), Preprocess()))


def test_doctor_says_which_resampler_the_exact_path_runs(monkeypatch, capsys):
    """`vitedge doctor` names the C resampler where it is loaded, and where it is not, says
    so and how to get it."""
    import json

    from tests.conftest import run_cli

    code, out, _ = run_cli(["doctor", "--json"], capsys)
    check = {c["name"]: c for c in json.loads(out)["checks"]}["exact resize"]
    assert code == 0 and check["ok"] == (resample.library() is not None)
    monkeypatch.setattr(resample, "library", lambda: None)
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    check = {c["name"]: c for c in json.loads(out)["checks"]}["exact resize"]
    assert not check["ok"] and "Pillow only" in check["detail"] and "gcc" in check["fix"]


def test_the_c_resampler_can_be_turned_off(monkeypatch):
    """VITEDGE_NATIVE_RESAMPLE=0: the library is not loaded, and a camera's array goes to
    Pillow as a PIL image (the same bytes)."""
    resample.library.cache_clear()
    monkeypatch.setenv(resample.OFF, "0")
    try:
        assert resample.library() is None
        frame = np.ascontiguousarray(np.asarray(synthetic(320, 240, 6))[:, :, ::-1])
        decoded = decode_frame(frame, "bgr")
        assert isinstance(decoded, Image.Image)
        assert np.array_equal(crop_pixels(decoded, Preprocess()),
                              plain_pillow(Image.fromarray(frame[:, :, ::-1]), Preprocess()))
    finally:
        monkeypatch.delenv(resample.OFF)
        resample.library.cache_clear()
