"""Token reuse in the runtime (`vitedge.open(streaming graph)`, `vitedge run` and `bench` on
one): on OpenCV's vtest.avi (a fixed camera over a plaza) every result is compared with a
full inference of the same frame by the plain exported graph in ONNX Runtime: a full pass
equals it (1e-5), a partial one agrees on top-1 for at least 99 % of the frames (the demo
model; the agreement measured here was 100 %). Two cameras batched keep their own states (each
gives what it gives alone); a resolution change, a reconnect and a moving camera make full passes;
the metrics endpoint serves the share of tokens recomputed per camera."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import vitedge
from tests.conftest import run_cli, streaming_pair

pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST, MEGAMIND = DATA / "vtest.avi", DATA / "Megamind.avi"
needs_footage = pytest.mark.skipif(
    not (VTEST.is_file() and MEGAMIND.is_file()),
    reason="OpenCV's sample videos are absent: apt-get install opencv-doc (make system)")
K, TOKENS = 13, 50
PARTIAL = K / TOKENS
MIN_AGREEMENT = 0.99
"""Top-1 agreement of partial passes with full inference on the demo model."""


@pytest.fixture(scope="module")
def streaming(tmp_path_factory, demo_streaming) -> Path:
    """The demo checkpoint's streaming graph at k = 13 of 50 tokens (its full pass beside)."""
    return streaming_pair(demo_streaming, tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module")
def plain(demo_fp32):
    """Full inference by the plain exported graph in ONNX Runtime: prepared frame -> logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(demo_fp32), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0][0]


def clip(path: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def judged(pipe, plain, pairs) -> tuple[int, int]:
    """(partial passes, of which top-1 agrees with full inference); every full pass equals
    the plain graph to 1e-5 and every partial one says so (its share is K / TOKENS)."""
    partial = agree = 0
    for frame, p in pairs:
        want = plain(pipe.prepare([frame]))
        if p.tokens_recomputed == 1.0:
            np.testing.assert_allclose(p.logits, want, rtol=0, atol=1e-5)
        else:
            assert p.tokens_recomputed == pytest.approx(PARTIAL)
            partial += 1
            agree += int(np.argmax(want)) == p.class_id
    return partial, agree


@needs_footage
def test_stream_from_the_file_agrees_with_full_inference(streaming, plain):
    with vitedge.open(streaming, keep_logits=True, token_refresh=10) as pipe:
        pairs = list(pipe.stream(str(VTEST), max_frames=150))
        counters = pipe.tokens.counters()
        shares = [p.tokens_recomputed for _, p in pairs]
        partial, agree = judged(pipe, plain, pairs)
        differs = max(float(np.abs(p.logits - plain(pipe.prepare([f]))).max())
                      for f, p in pairs if p.tokens_recomputed < 1)
    assert shares == ([1.0] + [pytest.approx(PARTIAL)] * 9) * 15
    assert partial == 135 and agree / partial >= MIN_AGREEMENT
    assert differs > 1e-4  # the partial passes really reused tokens
    assert counters["frames"] == 150 and counters["full_passes"] == 15 and counters["moved"] == 0
    assert counters["tokens_recomputed"] == pytest.approx((15 + 135 * PARTIAL) / 150, abs=1e-4)
    assert counters["full_pass_ms"] > 0 and counters["partial_pass_ms"] > 0


@needs_footage
def test_a_moving_camera_falls_back_to_full_passes(streaming, plain):
    """Megamind.avi (a moving camera): where more patches moved than a partial pass
    recomputes, the frame is a full pass; the partial passes left agree with full inference
    (measured: 99.5 %; bound 98 %), more than fixed-k token reuse alone does on the same
    frames (TokenReuse without the check; measured: 94 %)."""
    from vitedge.runtime.tokens import TokenReuse

    with vitedge.open(streaming, keep_logits=True) as pipe:
        pairs = list(pipe.stream(str(MEGAMIND), max_frames=270))
        counters = pipe.tokens.counters()
        partial, agree = judged(pipe, plain, pairs)
        xs = [pipe.prepare([f]) for f, _ in pairs]
    alone = TokenReuse.open(streaming)
    blind = [(int(np.argmax(alone.run(x, "film")[0])), int(np.argmax(plain(x)))) for x in xs]
    blind_agree = sum(a == b for a, b in blind[1:]) / (len(blind) - 1)
    assert counters["moved"] > 20 and counters["full_passes"] > counters["moved"]
    assert partial > 100 and agree / partial >= 0.98 and agree / partial > blind_agree


@needs_footage
def test_frame_reuse_in_front_of_token_reuse(streaming, plain):
    """A frame reused whole never reaches the streaming graph (0 tokens recomputed); the
    others go through token reuse and are judged against full inference."""
    with vitedge.open(streaming, keep_logits=True, reuse=128) as pipe:
        pairs = list(pipe.stream(str(VTEST), max_frames=150))
        frames, tokens = pipe.reuse.counters(), pipe.tokens.counters()
        inferred = [(f, p) for f, p in pairs if not p.reused]
        partial, agree = judged(pipe, plain, inferred)
    reused = [p for _, p in pairs if p.reused]
    assert reused and all(p.tokens_recomputed == 0.0 for p in reused)
    assert tokens["frames"] == frames["inferred"] == len(inferred) < 150
    assert partial > 0 and agree / partial >= MIN_AGREEMENT


@needs_footage
def test_two_cameras_batched_keep_their_own_states(streaming):
    """Batched with another camera, each camera's results are what it gives alone: a batch
    runs frame by frame, each through its own camera's state."""
    n = 40
    with vitedge.open(streaming, keep_logits=True) as pipe:
        multi = pipe.multi_stream({"plaza": str(VTEST), "film": str(MEGAMIND)}, batch=2)
        results = list(itertools.islice(multi, 2 * n))
        multi.close()
        sizes = dict(multi.batch_sizes)
        per = pipe.tokens.counters()["cameras"]
    assert sizes.get(2, 0) > 0
    for name, path in (("plaza", VTEST), ("film", MEGAMIND)):
        mine = sorted((r for r in results if r.camera == name), key=lambda r: r.number)
        assert [r.number for r in mine] == list(range(len(mine)))
        with vitedge.open(streaming, keep_logits=True) as alone:
            own = [p for _, p in alone.stream(str(path), max_frames=len(mine))]
        for r, p in zip(mine, own, strict=True):
            assert r.prediction.tokens_recomputed == p.tokens_recomputed
            np.testing.assert_allclose(r.prediction.logits, p.logits, rtol=0, atol=1e-5)
        # the batch that gave the last result may have run one more frame
        assert len(mine) <= per[name]["frames"] <= len(mine) + 1


@needs_footage
def test_a_new_resolution_starts_from_a_full_pass(streaming, plain, tmp_path):
    """A folder camera whose images change size: the first of the new size is a full pass,
    also when it shares a batch with the camera's frames before it."""
    folder = tmp_path / "door"
    folder.mkdir()
    for i, frame in enumerate(clip(VTEST, 12)):
        if i >= 6:
            frame = cv2.resize(frame, (384, 288), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i:02d}.png"), frame)
    with vitedge.open(streaming, keep_logits=True, token_refresh=1000) as pipe:
        multi = pipe.multi_stream({"door": str(folder)}, batch=4)
        results = sorted(multi, key=lambda r: r.number)
        counters = pipe.tokens.counters()["cameras"]["door"]
        judged(pipe, plain, [(r.frame, r.prediction) for r in results])
    shares = [r.prediction.tokens_recomputed for r in results]
    assert shares == [1.0] + [pytest.approx(PARTIAL)] * 5 + [1.0] + [pytest.approx(PARTIAL)] * 5
    assert counters["restarts"] == 1 and counters["full_passes"] == 2
    assert max(multi.batch_sizes) > 1  # the change came inside a batch


def test_a_reconnect_starts_from_a_full_pass(streaming, plain):
    """A live camera that drops and comes back: its first frame after the reconnect is a
    full pass, through `multi_stream` and through `vitedge run` on one source. The camera
    shows one still image, so nothing moves: the reconnect alone makes that full pass."""
    from tests.helpers.cameras import FlakyCamera
    from vitedge.options import PipelineOptions, SourceOptions
    from vitedge.runtime.run_loop import run_loop

    door = FlakyCamera(frames=20, outage=1.0, fps=25)
    try:
        with vitedge.open(streaming, keep_logits=True, token_refresh=1000) as pipe:
            multi = pipe.multi_stream({"door": door.url},
                                      source_options=SourceOptions(reconnect_for=20))
            results = []
            for r in multi:
                results.append(r)
                if multi.stats["door"].reconnects >= 1 and len(results) >= 30:
                    break
            multi.close()
            restarts = list(multi.readers["door"].restarts)
            judged(pipe, plain, [(r.frame, r.prediction) for r in results])
    finally:
        door.close()
    assert restarts and restarts[0] > 0
    first_after = next(r for r in results if r.number >= restarts[0])
    assert first_after.prediction.tokens_recomputed == 1.0
    before = [r.prediction.tokens_recomputed for r in results if r.number < restarts[0]]
    after = [r.prediction.tokens_recomputed for r in results if r.number > first_after.number]
    assert before[0] == 1.0 and all(s == pytest.approx(PARTIAL) for s in before[1:])
    assert after and all(s == pytest.approx(PARTIAL) for s in after)

    door = FlakyCamera(frames=20, outage=1.0, fps=25)
    try:
        summary = run_loop(str(streaming), door.url, max_frames=40,
                           pipeline=PipelineOptions(token_refresh=1000),
                           source_options=SourceOptions(reconnect_for=20))
    finally:
        door.close()
    assert summary["reconnects"] >= 1
    assert summary["tokens"]["restarts"] == summary["reconnects"]
    assert summary["tokens"]["full_passes"] == 1 + summary["reconnects"]


@needs_footage
def test_cli_run_and_bench_say_what_was_recomputed(streaming, plain, demo_fp32, tmp_path,
                                                   capsys):
    events = tmp_path / "events.jsonl"
    code, out, err = run_cli(["run", str(streaming), "--source", f"plaza={VTEST}",
                              "--token-refresh", "10", "--max-frames", "100", "--events",
                              str(events), "--json", "--no-status"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == summary["tokens"]["frames"] == 100
    assert summary["tokens"]["full_passes"] == sum(e["tokens_recomputed"] == 1.0 for e in lines)
    with vitedge.open(demo_fp32) as pipe:
        wants = [plain(pipe.prepare([f])) for f in clip(VTEST, 100)]
    partial = agree = 0
    for e in lines:
        want = wants[e["frame"]]
        probs = np.exp(want - want.max()) / np.exp(want - want.max()).sum()
        if e["tokens_recomputed"] == 1.0:  # a full pass: what the plain graph says
            assert e["top"][0]["class_id"] == int(np.argmax(want))
            assert e["top"][0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
        else:
            assert e["tokens_recomputed"] == pytest.approx(PARTIAL, abs=1e-4)
            partial += 1
            agree += e["top"][0]["class_id"] == int(np.argmax(want))
    assert partial == 90 and agree / partial >= MIN_AGREEMENT

    code, out, err = run_cli(["run", str(streaming), "--source", str(VTEST), "--reuse", "128",
                              "--max-frames", "60"], capsys)
    assert code == 0, err
    assert "60 frames delivered" in out and "tokens recomputed" in out
    assert "frame + token reuse" in out

    code, out, err = run_cli(["bench", str(streaming), "--source", str(VTEST), "--warmup", "0",
                              "--iterations", "20", "--token-refresh", "5", "--json"], capsys)
    assert code == 0, err
    reuse = json.loads(out)["results"][0]["reuse"]
    assert reuse["frames"] == reuse["inferred"] == 20
    tokens = reuse["token_reuse"]
    assert tokens["full_passes"] == 4  # frames 0, 5, 10 and 15
    assert tokens["tokens_recomputed"] == pytest.approx((4 + 16 * PARTIAL) / 20, abs=1e-4)
    assert tokens["full_pass_ms"] > 0 and tokens["partial_pass_ms"] > 0
    code, out, err = run_cli(["bench", str(streaming), "--source", str(VTEST), "--iterations",
                              "10"], capsys)
    assert code == 0, err
    assert "tokens recomputed" in out and "partial" in out
    code, out, err = run_cli(["run", str(streaming), "--source", str(VTEST), "--token-refresh",
                              "0"], capsys)
    assert code != 0 and "--token-refresh" in err and "Traceback" not in err
    code, out, err = run_cli(["tune-reuse", str(streaming), str(VTEST), "--max-frames", "5"],
                             capsys)
    assert code == 1 and "streaming graph" in err and "Traceback" not in err


@needs_footage
def test_metrics_serve_the_tokens_recomputed_per_camera(streaming):
    """`run --metrics-port` on a streaming graph, scraped over loopback mid-run: per camera,
    the frames through the streaming graph are the frames delivered, and the share of
    tokens recomputed is what its full and partial passes make."""
    import socket
    import urllib.request

    parser = pytest.importorskip("prometheus_client.parser")
    from vitedge.options import CameraOptions, PipelineOptions
    from vitedge.runtime.camera_loop import run_cameras
    from vitedge.runtime.cameras import Camera

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[tuple[list[dict], dict]] = []

    def status(rows):
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return
        samples = {}
        for family in parser.text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, sample.labels.get("camera"))] = sample.value
        scraped.append((rows, samples))

    cameras = [Camera("plaza", str(VTEST), fps=30), Camera("film", str(MEGAMIND), fps=30)]
    summary = run_cameras(str(streaming), cameras, CameraOptions(metrics_port=port),
                          max_frames=150, pipeline=PipelineOptions(token_refresh=8),
                          status=status)
    assert summary["frames"] == 150 and len(scraped) >= 2
    for rows, samples in scraped:
        for r in rows:
            if not r["processed"]:
                continue
            name = r["camera"]
            frames = samples[("vitedge_camera_token_frames_total", name)]
            full = samples[("vitedge_camera_token_full_passes_total", name)]
            assert frames == r["processed"]
            assert full >= 1 + (frames - 1) // 8  # the refresh, and the moving camera's
            share = samples[("vitedge_camera_tokens_recomputed_ratio", name)]
            assert share == pytest.approx((full + (frames - full) * PARTIAL) / frames, abs=1e-4)


def test_token_reuse_through_a_real_rtsp_server(streaming, plain, rtsp_plaza):
    """The plaza re-encoded as H.264 by GStreamer's RTSP server on loopback (real compression
    flicker): partial passes happen, every full pass equals full inference of the same
    decoded frame and the partial ones agree with it on top-1."""
    with vitedge.open(streaming, keep_logits=True) as pipe:
        pairs = list(pipe.stream(rtsp_plaza, max_frames=60))
        partial, agree = judged(pipe, plain, pairs)
    assert len(pairs) == 60 and partial > 0
    assert agree / partial >= 0.99, (agree, partial)
