"""Frame reuse (`vitedge.open(..., reuse=K)`, `vitedge run --reuse`, `vitedge tune-reuse`)
on real footage, OpenCV's sample videos from the `opencv-doc` package: a fixed camera over
a plaza (vtest.avi) and a moving one (Megamind.avi). Every reused result is compared with a
full inference of the same frame by a second pipeline without reuse; a panning camera cut
from the real footage, a scene cut and a frame whose noise alone changed test the gate's
decisions; --max-age bounds the age of a result."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import vitedge
from tests.conftest import run_cli
from vitedge.errors import VitedgeError
from vitedge.runtime.reuse import FrameReuse, tune_reuse

cv2 = pytest.importorskip("cv2")
DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST, MEGAMIND = DATA / "vtest.avi", DATA / "Megamind.avi"
needs_footage = pytest.mark.skipif(
    not (VTEST.is_file() and MEGAMIND.is_file()),
    reason="OpenCV's sample videos are absent: apt-get install opencv-doc (make system)")


def clip(path: Path, n: int, start: int = 0) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    for i in itertools.count():
        ok, frame = cap.read()
        if not ok or len(frames) >= n:
            break
        if i >= start:
            frames.append(frame)
    cap.release()
    return frames


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def checked(pipe, full, frames) -> tuple[int, int, list[float]]:
    """(frames reused, reused frames whose top-1 differs from full inference, their logit
    cosines), every result checked: an inferred one equals full inference."""
    reused = differ = 0
    cosines = []
    for f in frames:
        p, q = pipe(f), full(f)
        if p.reused:
            reused += 1
            differ += p.class_id != q.class_id
            cosines.append(cosine(p.logits, q.logits))
            assert p.age >= 1 and p.age_ms >= 0
        else:
            assert p.age == 0 and p.class_id == q.class_id
            np.testing.assert_allclose(p.logits, q.logits, rtol=1e-5, atol=1e-5)
    return reused, differ, cosines


@needs_footage
def test_reused_results_on_a_fixed_camera_agree_with_full_inference(demo_fp32):
    frames = clip(VTEST, 240)
    with vitedge.open(demo_fp32, keep_logits=True) as full, \
            vitedge.open(demo_fp32, keep_logits=True, reuse=128, max_age="30") as pipe:
        reused, differ, cosines = checked(pipe, full, frames)
        counters = pipe.reuse.counters()
    assert reused >= 0.2 * len(frames), f"only {reused} of {len(frames)} frames reused"
    assert differ == 0
    assert min(cosines) > 0.999
    assert counters["frames"] == len(frames) and counters["reused"] == reused
    assert counters["inferred"] == len(frames) - reused


@needs_footage
def test_a_panning_camera_falls_back_to_full_work(demo_fp32):
    """A camera panning over the real plaza (a 384x384 window of the playing video moving
    32 px a frame, there and back): every frame changed on the model's grid, so every frame
    is inferred, where the same window held still is reused."""
    video = clip(VTEST, 66, start=100)
    steps = list(range(0, 768 - 384 + 1, 32))
    xs = ((steps + steps[::-1][1:-1]) * 4)[:len(video)]
    panned = [f[96:480, x:x + 384].copy() for f, x in zip(video, xs, strict=True)]
    still = [f[96:480, 192:576].copy() for f in video]
    with vitedge.open(demo_fp32, keep_logits=True) as full:
        for frames, most in ((panned, 0), (still, None)):
            with vitedge.open(demo_fp32, keep_logits=True, reuse=64) as pipe:
                reused, differ, _ = checked(pipe, full, frames)
            assert differ == 0
            if most is not None:
                assert reused <= most, f"{reused} of {len(frames)} panned frames reused"
            else:
                assert reused > 0


@needs_footage
def test_the_moving_camera_clip_keeps_agreement_at_the_tuned_threshold(demo_fp32):
    """tune-reuse on Megamind.avi, then its choice replayed by a reusing pipeline and checked
    frame by frame against full inference, independently of the tuner's own figures."""
    frames = clip(MEGAMIND, 200)
    with vitedge.open(demo_fp32, keep_logits=True) as full:
        choice = tune_reuse(full, frames, budget=0.01, max_age="30")
    assert choice.threshold is not None and choice.frames == len(frames)
    reused_share = [r["reused"] for r in choice.rows]
    assert reused_share == sorted(reused_share)  # a larger threshold never reuses less
    with vitedge.open(demo_fp32, keep_logits=True) as full, \
            vitedge.open(demo_fp32, keep_logits=True, reuse=choice.threshold) as pipe:
        reused, differ, _ = checked(pipe, full, frames)
    row = next(r for r in choice.rows if r["threshold"] == choice.threshold)
    assert reused == round(row["reused"] * len(frames))
    assert differ <= 0.01 * len(frames)
    assert reused < len(frames) * 0.9  # the camera moves: much is inferred


@needs_footage
def test_a_scene_cut_and_noise(demo_fp32):
    """The same real frame with fresh sensor noise each time is reused once the noise floor
    is learnt; a cut to another scene is inferred at once, even at a lax threshold."""
    rng = np.random.default_rng(0)
    still = clip(VTEST, 1, start=300)[0].astype(np.float32)
    other = cv2.resize(clip(MEGAMIND, 1, start=60)[0], (still.shape[1], still.shape[0]))
    noisy = [np.clip(still + rng.normal(0, 4, still.shape), 0, 255).astype(np.uint8)
             for _ in range(12)]
    with vitedge.open(demo_fp32, keep_logits=True, reuse=8) as pipe:
        got = [pipe(f) for f in noisy]
        cut = pipe(other)
    assert [p.reused for p in got[:4]] == [False] * 4  # learning the floor
    assert all(p.reused for p in got[4:]), [p.reused for p in got]
    assert [p.age for p in got[4:]] == list(range(1, 9))
    assert not cut.reused and cut.age == 0


@needs_footage
def test_max_age_in_frames_and_seconds(demo_fp32):
    still = clip(VTEST, 1, start=300)[0]
    with vitedge.open(demo_fp32, reuse=4, max_age="10") as pipe:
        inferred = [i for i in range(40) if not pipe(still).reused]
    assert inferred == [0, 1, 2, 3, 13, 23, 33]
    with vitedge.open(demo_fp32) as pipe:
        now = [0.0]
        gate = FrameReuse(pipe.manifest, 4, "1s", clock=lambda: now[0])
        x = pipe.prepare([still])
        ticks = []
        for i in range(30):
            now[0] = i * 0.25
            if not gate.run(x, {}, ["cam"], pipe._infer_all)[0].reused:
                ticks.append(now[0])
    assert ticks == [0.0, 0.25, 0.5, 0.75, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75]


@needs_footage
def test_multi_stream_keeps_one_state_per_camera(demo_fp32):
    with vitedge.open(demo_fp32, keep_logits=True) as full, \
            vitedge.open(demo_fp32, keep_logits=True, reuse=128) as pipe:
        multi = pipe.multi_stream({"plaza": str(VTEST), "film": str(MEGAMIND)}, batch=2)
        results = list(itertools.islice(multi, 200))
        multi.close()
        counters = pipe.reuse.counters()["cameras"]
        for r in results:
            if r.prediction.reused:
                q = full(r.frame)
                assert r.prediction.class_id == q.class_id
                assert cosine(r.prediction.logits, q.logits) > 0.995
    seen = {name: sum(r.camera == name for r in results) for name in ("plaza", "film")}
    for name in ("plaza", "film"):
        assert counters[name]["frames"] == seen[name]
        assert counters[name]["reused"] == sum(r.camera == name and r.prediction.reused
                                               for r in results)
    assert sum(c["reused"] for c in counters.values()) > 0


@needs_footage
def test_cli_run_and_tune_reuse(demo_fp32, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    code, out, err = run_cli(["run", str(demo_fp32), "--source", f"plaza={VTEST}",
                              "--reuse", "128", "--max-frames", "120", "--events",
                              str(events), "--json", "--no-status"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert summary["reuse"]["frames"] == len(lines) == 120
    assert summary["reuse"]["reused"] == sum(e["reused"] for e in lines) > 0
    assert all((e["age"] == 0) != e["reused"] for e in lines)
    code, out, err = run_cli(["run", str(demo_fp32), "--source", str(VTEST), "--reuse", "128",
                              "--max-frames", "60"], capsys)
    assert code == 0, err
    assert "60 frames delivered" in out and "inferred" in out
    code, out, err = run_cli(["tune-reuse", str(demo_fp32), str(MEGAMIND), "--max-frames", "60",
                              "--json"], capsys)
    assert code == 0, err
    choice = json.loads(out)
    assert choice["frames"] == 60 and len(choice["rows"]) > 5
    code, out, err = run_cli(["run", str(demo_fp32), "--source", str(VTEST), "--reuse", "8",
                              "--max-age", "soon"], capsys)
    assert code != 0 and "--max-age" in err and "Traceback" not in err
    with pytest.raises(VitedgeError, match="max-age"):
        vitedge.open(demo_fp32, reuse=8, max_age="0")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out, err = run_cli(["run", str(demo_fp32), "--source", str(VTEST),
                                  "--metrics-port", str(taken.getsockname()[1]),
                                  "--max-frames", "5"], capsys)
    assert code != 0 and "cannot serve metrics" in err and "Traceback" not in err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_footage
def test_metrics_are_scraped_over_loopback_while_cameras_run(demo_fp32):
    """`run --metrics-port`: Prometheus' own parser reads the endpoint mid-run; each camera's
    processed frames, drops, latency observations and reuse counts match the camera loop's
    figures at that moment, and the port is closed once the run ends."""
    import urllib.error
    import urllib.request

    parser = pytest.importorskip("prometheus_client.parser")
    from vitedge.options import CameraOptions, PipelineOptions
    from vitedge.runtime.camera_loop import run_cameras
    from vitedge.runtime.cameras import Camera

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[tuple[list[dict], dict]] = []
    closed: list[bool] = []

    def status(rows):
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except (urllib.error.URLError, ConnectionError):
            closed.append(True)
            return
        samples = {}
        for family in parser.text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, s.labels.get("camera"), s.labels.get("le"))] = s.value
        scraped.append((rows, samples))

    cameras = [Camera("plaza", str(VTEST), fps=30), Camera("film", str(MEGAMIND), fps=30)]
    summary = run_cameras(str(demo_fp32), cameras, CameraOptions(metrics_port=port),
                          max_frames=150, pipeline=PipelineOptions(reuse=128), status=status)
    assert summary["frames"] == 150 and closed == [True]
    assert len(scraped) >= 2
    for rows, samples in scraped:
        for r in rows:
            name = r["camera"]
            processed = samples[("vitedge_camera_frames_processed_total", name, None)]
            assert processed == r["processed"]
            assert samples[("vitedge_camera_frames_read_total", name, None)] >= processed
            assert samples[("vitedge_camera_frames_dropped_total", name, None)] == r["dropped"]
            # the histogram counts results handed out; the rest of the batch is on its way
            delivered = samples.get(("vitedge_camera_latency_seconds_count", name, None), 0)
            assert 0 <= processed - delivered < summary["batch"]
            assert samples.get(("vitedge_camera_latency_seconds_bucket", name, "+Inf"),
                               0) == delivered
            # a camera with no frame through the reuse gate yet has no reuse series
            assert (samples.get(("vitedge_camera_frames_reused_total", name, None), 0)
                    + samples.get(("vitedge_camera_frames_inferred_total", name, None), 0)
                    ) == processed
    last = scraped[-1][1]
    assert sum(last[("vitedge_camera_frames_reused_total", n, None)]
               for n in ("plaza", "film")) > 0


def test_reuse_through_a_real_rtsp_server(demo_fp32, rtsp_plaza):
    """The plaza re-encoded as H.264 and read over RTSP (real compression flicker): the
    noise floor is learnt from the stream, frames are reused, and every reused result
    agrees with a full inference of the same decoded frame."""
    with vitedge.open(demo_fp32, keep_logits=True) as full, \
            vitedge.open(demo_fp32, keep_logits=True, reuse=128) as pipe:
        reused = differ = 0
        count = 0
        for frame, p in pipe.stream(rtsp_plaza, max_frames=100):
            count += 1
            q = full(frame)
            if p.reused:
                reused += 1
                differ += p.class_id != q.class_id
                assert cosine(p.logits, q.logits) > 0.999
            else:
                np.testing.assert_allclose(p.logits, q.logits, rtol=1e-5, atol=1e-5)
        floor = pipe.reuse.counters()["cameras"]["-"]["noise_floor"]
    assert count == 100 and reused > 0 and differ == 0
    assert floor > 0
