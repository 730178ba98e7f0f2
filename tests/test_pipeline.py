"""The runtime pipeline on the demo model: frames of every kind, image folders and a video
written here, exact against fast preprocessing, bench statistics on a fake clock, and bad
input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import vitedge
from tests.conftest import DEMO_TEST_IMAGES, run_cli
from vitedge.backends import Runner
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.bench import BenchOptions, bench
from vitedge.compare import agreement
from vitedge.errors import VitedgeError
from vitedge.runtime.pipeline import STAGES, Pipeline
from vitedge.runtime.preprocess import load_image, preprocess_image
from vitedge.runtime.sources import FrameSource, SourceOptions, describe
from vitedge.runtime.stats import Stats

PHOTOS = Path(__file__).parents[1] / "vitedge" / "data" / "photos"


@pytest.fixture(scope="module")
def test_files() -> list[Path]:
    return sorted(DEMO_TEST_IMAGES.rglob("*.png"))[::10][:200]


def test_prediction_matches_the_model_on_the_reference_preprocessing(demo_fp32, test_files):
    with vitedge.open(demo_fp32, keep_logits=True) as pipe:
        for f in test_files[:20]:
            p = pipe(f)
            x = preprocess_image(load_image(f), pipe.manifest.preprocess)[None]
            logits = OnnxRuntimeRunner(demo_fp32).infer(x)[0]
            assert p.class_id == int(np.argmax(logits))
            assert p.label == pipe.manifest.labels[p.class_id]
            np.testing.assert_allclose(p.logits, logits, rtol=1e-5, atol=1e-5)
            assert sum(s for _, _, s in p.topk) <= 1.0 + 1e-6 and len(p.topk) == 5
            assert set(p.timings) == set(STAGES)


def test_frames_of_every_kind_give_the_same_prediction(demo_fp32):
    path = PHOTOS / "chelsea.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    with vitedge.open(demo_fp32, keep_logits=True) as bgr_pipe, \
            vitedge.open(demo_fp32, color="rgb", keep_logits=True) as rgb_pipe:
        reference = bgr_pipe(path).logits
        for pipe, frame in [(bgr_pipe, rgb[:, :, ::-1].copy()), (rgb_pipe, rgb),
                            (bgr_pipe, Image.fromarray(rgb)), (bgr_pipe, str(path)),
                            (rgb_pipe, np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))]:
            np.testing.assert_allclose(pipe(frame).logits, reference, rtol=1e-5, atol=1e-5)
        gray = np.asarray(Image.open(path).convert("L"))
        np.testing.assert_allclose(bgr_pipe(gray).logits, bgr_pipe(Image.fromarray(gray)).logits,
                                   rtol=1e-5, atol=1e-5)


def test_fast_preprocessing_agrees_with_exact_on_the_test_images(demo_fp32, test_files):
    with vitedge.open(demo_fp32, keep_logits=True) as exact, \
            vitedge.open(demo_fp32, fast=True, keep_logits=True) as fast:
        a = np.stack([exact(f).logits for f in test_files])
        b = np.stack([fast(cv2.imread(str(f))).logits for f in test_files])
        photos = [cv2.imread(str(p)) for p in sorted(PHOTOS.glob("*.jpg"))]
        pa = np.stack([exact(p).logits for p in photos])
        pb = np.stack([fast(p).logits for p in photos])
    # 28x28 test images need no resize: the two paths only differ in arithmetic
    assert agreement(a, b).top1_agreement == 1.0
    assert agreement(pa, pb).cosine > 0.98  # photos are resized: OpenCV's filter differs


def test_stream_prefetch_matches_plain_calls_skips_broken_files_and_raises_bad_frames(
        demo_fp32, tmp_path):
    files = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:30]
    with vitedge.open(demo_fp32, keep_logits=True) as pipe:
        plain = [p.logits for _, p in pipe.stream(files, prefetch=0)]
        ahead = [p.logits for _, p in pipe.stream(iter(files), prefetch=3)]
        np.testing.assert_array_equal(np.stack(plain), np.stack(ahead))
        assert len(list(pipe.stream(iter(files), max_frames=4))) == 4
        (tmp_path / "broken.png").write_bytes(b"x")
        for prefetch in (0, 2):  # an unreadable file is left out, named, and the rest run
            got = list(pipe.stream([*files[:3], tmp_path / "broken.png", *files[3:6]],
                                   prefetch=prefetch))
            assert [f for f, _ in got] == files[:6]
        assert [p for p, _ in pipe.skipped] == [str(tmp_path / "broken.png")] * 2
        assert "cannot read image" in pipe.skipped[0][1]
        with pytest.raises(VitedgeError, match="uint8"):  # a bad frame the worker meets
            list(pipe.stream([*files[:3], np.zeros((8, 8), np.float32), *files[3:6]]))


def test_stream_in_batches(demo_fp32):
    files = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:11]
    with vitedge.open(demo_fp32, keep_logits=True) as one, \
            vitedge.open(demo_fp32, keep_logits=True, batch=4) as four:
        a = [p.logits for _, p in one.stream(files)]
        b = [(f, p.logits) for f, p in four.stream(files)]
    assert [f for f, _ in b] == files
    np.testing.assert_allclose(np.stack(a), np.stack([x for _, x in b]), rtol=1e-5, atol=1e-5)
    assert len(four.times.samples["infer"]) == 3  # 4 + 4 + 3


def test_streams_keep_frames_in_flight_and_give_the_same_predictions_in_order(demo_fp32, tmp_path):
    from vitedge.runtime.pipeline import available_cores

    files = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:30]
    with vitedge.open(demo_fp32, keep_logits=True) as one, \
            vitedge.open(demo_fp32, keep_logits=True, streams=2) as two, \
            vitedge.open(demo_fp32, keep_logits=True, streams=3, batch=4) as three:
        assert two.model.session.get_session_options().intra_op_num_threads == max(1, available_cores() // 2)
        reference = np.stack([p.logits for _, p in one.stream(files)])
        for pipe in (two, three):
            got = list(pipe.stream(iter(files)))
            assert [f for f, _ in got] == files
            np.testing.assert_allclose(np.stack([p.logits for _, p in got]), reference,
                                       rtol=1e-5, atol=1e-5)
        assert len(three.times.samples["infer"]) == 8  # 7 batches of 4 + 1 of 2
        (tmp_path / "broken.png").write_bytes(b"x")
        got = list(two.stream([*files[:5], tmp_path / "broken.png", *files[5:9]]))
        assert [f for f, _ in got] == files[:9] and len(two.skipped) == 1
        with pytest.raises(VitedgeError, match="uint8"):  # raised at its frame, in order
            list(two.stream([*files[:5], np.zeros((8, 8), np.float32), *files[5:9]]))
        first = two.stream(files)
        next(first)
        first.close()  # frames still in flight are dropped; the pipeline goes on
        assert len(list(two.stream(files[:4]))) == 4
    with pytest.raises(VitedgeError, match="closed"):
        list(two.stream(files[:2]))


class SlowModel(Runner):
    """A runner with the demo model's manifest that takes 50 ms a call and records how many
    calls run at once; its one logit is the input's mean, to follow the frames' order."""

    backend = "test"

    def __init__(self, demo_fp32: Path, concurrent: bool):
        import threading

        with OnnxRuntimeRunner(demo_fp32) as inner:
            self.path, self.manifest = inner.path, inner.manifest
            self.inputs, self.outputs = inner.inputs, inner.outputs
        self.warnings = []
        self.concurrent = concurrent  # type: ignore[misc]
        self.active = self.most = 0
        self._count = threading.Lock()

    def _release(self) -> None:
        pass

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": self.infer(x)}

    def infer(self, x: np.ndarray) -> np.ndarray:
        import time

        with self._count:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.05)
        with self._count:
            self.active -= 1
        logits = np.zeros((len(x), 10), np.float32)
        logits[:, 0] = x.reshape(len(x), -1).mean(axis=1)
        return logits


def test_streams_run_that_many_inferences_at_once_and_only_where_the_backend_can(demo_fp32):
    frames = [np.full((28, 28), v, np.uint8) for v in range(0, 240, 20)]
    model = SlowModel(demo_fp32, concurrent=True)
    pipe = Pipeline(model, streams=3, keep_logits=True)
    means = [p.logits[0] for _, p in pipe.stream(frames)]
    pipe.close()
    assert model.most == 3
    assert means == sorted(means) and len(set(means)) == len(frames)
    alone = SlowModel(demo_fp32, concurrent=True)
    list(Pipeline(alone).stream(frames))
    assert alone.most == 1
    with pytest.raises(VitedgeError, match="streams must be 1"):
        Pipeline(SlowModel(demo_fp32, concurrent=False), streams=2)


class FlakyCapture:
    """A capture that fails `fail` reads after every `good` frames, then ends."""

    def __init__(self, frames: int, good: int, fail: int):
        self.left, self.good, self.fail, self.n = frames, good, fail, 0

    def read(self):
        self.n += 1
        cycle = (self.n - 1) % (self.good + self.fail)
        if self.left <= 0 or cycle >= self.good:
            return False, None
        self.left -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self):
        pass


def test_live_source_counts_dropped_frames_and_reconnects(monkeypatch):
    captures = [FlakyCapture(frames=6, good=3, fail=2), FlakyCapture(frames=4, good=4, fail=0)]
    now = [0.0]  # a clock that moves only when the source sleeps

    def sleep(seconds: float) -> None:
        now[0] += seconds

    source = FrameSource("rtsp://camera/stream",
                         SourceOptions(max_failures=3, backoff=0.5, reconnect_for=2.0),
                         sleep=sleep, clock=lambda: now[0])
    opened = iter(captures)

    def reopen() -> FlakyCapture:
        capture = next(opened, None)
        if capture is None:
            raise VitedgeError("cannot open stream rtsp://camera/stream")
        return capture

    monkeypatch.setattr(source, "_open_capture", reopen)
    frames = list(source)
    # first capture: 3 good, 2 dropped, 3 good, then fails -> reconnect; second: 4 good,
    # then fails; with no reconnect budget left the source ends and says why
    assert len(frames) == 10
    assert source.stats.frames == 10 and source.stats.reconnects == 1
    assert source.stats.dropped >= 2 + 3
    # the second outage: waits of 0.5, 1.0 and what is left of the 2 s budget, all failed
    assert source.stats.reconnect_attempts == 1 + 3
    assert source.stats.gave_up == "no frame for 2.0 s after 4 reconnect attempts"


def test_pipeline_on_a_folder_and_on_a_video(demo_fp32, tmp_path):
    video = tmp_path / "clip.avi"
    files = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:12]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (112, 112))
    for f in files:
        writer.write(cv2.resize(cv2.imread(str(f)), (112, 112), interpolation=cv2.INTER_NEAREST))
    writer.release()
    with vitedge.open(demo_fp32) as pipe:
        from_folder = [p.label for _, p in pipe.stream(str(DEMO_TEST_IMAGES / "bag"), max_frames=5)]
        from_video = list(pipe.stream(str(video)))
    assert len(from_folder) == 5 and all(isinstance(lab, str) for lab in from_folder)
    assert len(from_video) == 12
    assert all(isinstance(frame, np.ndarray) and frame.shape == (112, 112, 3) for frame, _ in from_video)
    assert pipe.times.frames == 17


@pytest.mark.parametrize("source, kind", [
    ("0", "camera"), (1, "camera"), ("/dev/video2", "camera"), ("rtsp://cam/stream", "stream"),
    ("http://host/mjpg", "stream"),
    ("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink", "gstreamer"),
    ("images/*.jpg", "glob"), (str(PHOTOS), "folder"), (str(PHOTOS / "coffee.jpg"), "image"),
])
def test_source_kinds(source, kind):
    assert describe(source) == kind


def test_bad_frames_and_sources(demo_fp32, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("x")
    with vitedge.open(demo_fp32) as pipe:
        with pytest.raises(VitedgeError, match="cannot read image"):
            pipe(tmp_path / "broken.png")
        with pytest.raises(VitedgeError, match="not HxW, HxWx3 or HxWx4"):
            pipe(np.zeros((4, 4, 5), np.uint8))
        with pytest.raises(VitedgeError, match="uint8"):
            pipe(np.zeros((4, 4, 3), np.float32))
        with pytest.raises(VitedgeError, match="numpy array, a PIL image or a path"):
            pipe(42.0)
    with pytest.raises(VitedgeError, match="closed"):
        pipe(PHOTOS / "coffee.jpg")
    with pytest.raises(VitedgeError, match="is not an image, folder, video"):
        FrameSource(str(tmp_path / "notes.txt"))
    with pytest.raises(VitedgeError, match="no such image"):
        FrameSource(str(tmp_path / "missing.png"))
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    with pytest.raises(VitedgeError, match="cannot open video"):
        list(FrameSource(str(tmp_path / "fake.mp4")))


class FakeClock:
    """Advances by a scripted amount on each reading."""

    def __init__(self, steps: list[float]):
        self.steps, self.now, self.i = steps, 0.0, 0

    def __call__(self) -> float:
        self.now += self.steps[self.i % len(self.steps)]
        self.i += 1
        return self.now


def test_fast_path_takes_every_channel_order_as_numpy_would(demo_fp32):
    """The fast path's colour conversion (one OpenCV pass) against numpy's own indexing."""
    from vitedge.runtime.decode import decode_frame

    rgb = np.asarray(Image.open(PHOTOS / "chelsea.jpg").convert("RGB"))
    alpha = np.full(rgb.shape[:2], 7, np.uint8)
    gray = np.asarray(Image.open(PHOTOS / "chelsea.jpg").convert("L"))
    for frame, color in [(rgb[:, :, ::-1], "bgr"), (rgb, "rgb"),
                         (np.dstack([rgb[:, :, ::-1], alpha]), "bgr"),
                         (np.dstack([rgb, alpha]), "rgb"), (gray, "bgr")]:
        want = np.repeat(gray[:, :, None], 3, axis=2) if frame.ndim == 2 else rgb
        got = decode_frame(frame, color, fast=True)
        assert got.flags.c_contiguous and np.array_equal(got, want), (frame.shape, color)
    with vitedge.open(demo_fp32, fast=True, keep_logits=True) as pipe:
        np.testing.assert_array_equal(pipe(rgb[:, :, ::-1].copy()).logits,
                                      pipe(Image.fromarray(rgb)).logits)


def test_top_classes_are_the_best_in_order():
    from vitedge.runtime.postprocess import top_classes

    logits = np.random.default_rng(0).normal(size=(4, 21843)).astype(np.float32)
    ids, scores = top_classes(logits, 5)
    assert np.array_equal(ids, np.argsort(-logits, axis=1)[:, :5])
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.array_equal(top_classes(logits[:, :3], 5)[0], np.argsort(-logits[:, :3], axis=1))


def test_bench_percentiles_on_a_fake_clock(demo_fp32):
    # readings per call: bench's start; the pipeline's start, after decode, preprocess
    # and patchify; before and after infer, after postprocess; bench's end
    clock = FakeClock([0.0, 0.0, 0.001, 0.002, 0.0, 0.0, 0.004, 0.001, 0.0])
    pipe = Pipeline(OnnxRuntimeRunner(demo_fp32), clock=clock)
    results = bench([], BenchOptions(warmup=0, iterations=10), clock=clock, pipelines=[pipe])
    r = results[0]
    assert r.iterations == 10 and r.batch == 1
    assert r.stages["decode"].mean == pytest.approx(1.0)
    assert r.stages["preprocess"].p99 == pytest.approx(2.0)
    assert r.stages["infer"].max == pytest.approx(4.0)
    assert r.end_to_end.mean == pytest.approx(8.0)
    assert r.frame_path_share == pytest.approx((8.0 - 4.0) / 4.0)  # all but the 4 ms infer
    assert r.throughput_fps == pytest.approx(125.0)


def test_stats_percentiles():
    s = Stats.of([float(v) for v in range(1, 101)])
    assert (s.mean, s.p50, s.max, s.n) == (50.5, 50.5, 100.0, 100)
    assert s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)


def test_bench_cli_writes_json_csv_and_plot(demo_fp32, tmp_path, capsys):
    out = tmp_path / "b.json"
    code, stdout, err = run_cli(["bench", str(demo_fp32), str(demo_fp32), "--batch", "1,2",
                                 "--streams", "1,2", "--iterations", "3", "--warmup", "1",
                                 "--json-file", str(out), "--csv", str(tmp_path / "b.csv"),
                                 "--plot", str(tmp_path / "b.png")], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["machine"]["onnxruntime"]
    assert len(data["results"]) == 8
    assert [(r["streams"], r["batch"]) for r in data["results"][:4]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in data["results"]:
        assert set(r["stages"]) == set(STAGES) and r["end_to_end"]["n"] == 3 * r["streams"]
        assert r["throughput_fps"] > 0
        for key in ("mean", "p50", "p90", "p99", "max"):
            assert r["end_to_end"][key] > 0
    assert (tmp_path / "b.csv").read_text().count("\n") == 1 + 8 * (len(STAGES) + 1)
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "artifacts interleaved" in stdout and "of infer" in stdout
    model_name = next((line.split(":", 1)[1].strip() for line in
                       Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), None)
    if model_name:  # the machine is named where the numbers are
        assert model_name in data["machine_line"] and model_name in stdout.replace("\n", "")


def test_predict_and_run_cli(demo_fp32, tmp_path, capsys):
    code, out, err = run_cli(["predict", str(demo_fp32), str(DEMO_TEST_IMAGES / "trouser"),
                              "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["warnings"] == [] and report["artifact"] == str(demo_fp32)
    preds = report["predictions"]
    assert len(preds) > 100
    assert sum(p["label"] == "Trouser" for p in preds) / len(preds) > 0.9
    code, out, err = run_cli(["run", str(demo_fp32), "--source", str(DEMO_TEST_IMAGES / "bag"),
                              "--max-frames", "7", "--output", str(tmp_path / "out.avi"), "--json"],
                             capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames"] == 7 and set(summary["stages"]) == set(STAGES)
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    cap.release()
    code, _, err = run_cli(["predict", str(demo_fp32), str(tmp_path / "out.avi")], capsys)
    assert code == 1 and "use `vitedge run --source`" in err


def test_stage_times_stay_bounded(demo_fp32, monkeypatch):
    """A camera loop runs for days: the pipeline keeps only the latest calls' timings."""
    from vitedge.runtime import stats

    monkeypatch.setattr(stats, "KEEP_SAMPLES", 5)
    with vitedge.open(demo_fp32) as pipe:
        frame = np.zeros((28, 28), np.uint8)
        for _ in range(12):
            pipe(frame)
    assert pipe.times.frames == 12
    assert all(len(v) == 5 for v in pipe.times.samples.values())
