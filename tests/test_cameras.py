"""Many cameras, one model (`pipe.multi_stream`, `vitedge run --source NAME=URI ...`):
loopback MJPEG cameras (one that drops and comes back, one that starts late), a video file
and a folder give predictions equal to `pipe(frame)` on the same frames, in order per camera,
in batches the model really sees; a slow model drops frames at the source and keeps its
latency; events arrive once each as JSON lines and through a real mosquitto broker, and a
broker restart loses nothing; bad camera lists are one line each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vitedge
from tests.conftest import DEMO_TEST_IMAGES, run_cli
from tests.helpers.cameras import FlakyCamera
from vitedge.errors import VitedgeError
from vitedge.options import SourceOptions

cv2 = pytest.importorskip("cv2")
ROOT = Path(__file__).parents[1]
IMAGES = sorted(DEMO_TEST_IMAGES.rglob("*.png"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 40-frame video file and a 30-image folder of test images."""
    d = tmp_path_factory.mktemp("cameras")
    video = d / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (28, 28))
    for p in IMAGES[:40]:
        writer.write(cv2.imread(str(p)))
    writer.release()
    folder = d / "shelf"
    folder.mkdir()
    for p in IMAGES[100:130]:
        shutil.copy(p, folder / p.name)
    return {"video": video, "folder": folder}


class Recording:
    """The real runner, recording the batch sizes it is given (and optionally slowed)."""

    def __init__(self, runner, delay: float = 0.0):
        self.runner, self.delay, self.sizes = runner, delay, []
        self._infer_timed = runner.infer_timed
        runner.infer_timed = self.infer_timed

    def infer_timed(self, x):
        self.sizes.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        return self._infer_timed(x)


def test_four_cameras_give_what_pipe_gives_in_order_in_real_batches(demo_fp32, files):
    door = FlakyCamera(frames=30, outage=2.0, fps=15, images=IMAGES[200:210])  # drops, returns
    yard = FlakyCamera(frames=10**6, outage=0.0, late=3.0, fps=15, images=IMAGES[300:310])
    results = []
    try:
        with vitedge.open(demo_fp32) as pipe:
            seen = Recording(pipe.model)
            multi = pipe.multi_stream({"door": door.url, "yard": yard.url,
                                       "line": str(files["video"]),
                                       "shelf": str(files["folder"])},
                                      source_options=SourceOptions(reconnect_for=20))
            deadline = time.monotonic() + 40
            for r in multi:
                results.append(r)
                s = multi.stats
                if (s["door"].processed >= 45 and s["yard"].processed >= 20) or \
                        time.monotonic() > deadline:
                    break
            multi.close()
            stats = {k: v.to_dict() for k, v in multi.stats.items()}
            sizes = list(seen.sizes)
            for r in results:  # every prediction is what the single-frame call gives
                alone = pipe(r.frame)
                assert alone.class_id == r.prediction.class_id
                assert alone.score == pytest.approx(r.prediction.score, abs=1e-4)
    finally:
        door.close()
        yard.close()
    by_camera: dict[str, list[int]] = {}
    for r in results:
        by_camera.setdefault(r.camera, []).append(r.number)
    for name, numbers in by_camera.items():
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), name
    assert by_camera["line"] == list(range(40)) and by_camera["shelf"] == list(range(30))
    assert stats["door"]["reconnects"] >= 1 and stats["door"]["processed"] >= 45
    assert stats["yard"]["processed"] >= 20 and stats["yard"]["gone"] is None
    assert stats["yard"]["fps"] > 0
    assert max(sizes) > 1  # batches really formed (the last one may be left unread)
    assert len(results) <= sum(sizes) < len(results) + multi.batch
    assert sorted(multi.batch_sizes.elements()) == sorted(sizes)
    assert all(s <= multi.batch for s in sizes) and multi.batch == 4


def test_a_slow_model_drops_frames_at_the_source_and_keeps_its_latency(demo_fp32):
    camera = FlakyCamera(frames=10**6, outage=0.0, fps=30)
    delay = 0.25
    try:
        with vitedge.open(demo_fp32) as pipe:
            Recording(pipe.model, delay=delay)
            multi = pipe.multi_stream({"cam": camera.url}, max_wait_ms=0)
            latencies = []
            start = time.monotonic()
            for r in multi:
                latencies.append(r.latency_ms)
                assert len(multi.readers["cam"].pending) <= 1  # never a queue
                if time.monotonic() - start > 4:
                    break
            multi.close()
            s = multi.stats["cam"]
    finally:
        camera.close()
    assert s.dropped > 3 * s.processed  # ~30 frames/s read, ~4 inferences/s
    assert s.read >= s.processed + s.dropped
    # a frame waits at most for the inference in progress, then its own: no backlog builds
    assert max(latencies[2:]) < (2 * delay + 0.2) * 1e3, latencies


def test_json_lines_and_mqtt_carry_every_prediction_once_in_order(demo_fp32, files, tmp_path):
    from tests.helpers.mqtt import Broker, Subscriber

    broker = Broker(tmp_path)
    subscriber = Subscriber(broker.port, "vitedge/test")
    try:
        events = tmp_path / "events.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "vitedge", "run", str(demo_fp32), "--source",
             f"line={files['video']}", "--source", f"shelf={files['folder']}", "--events",
             str(events), "--mqtt", f"127.0.0.1:{broker.port}/vitedge/test", "--json"],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads(result.stdout)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert len(lines) == 70 == summary["frames"]
        assert summary["events"]["mqtt"]["published"] == 70
        arrived = subscriber.wait_for(70)
    finally:
        subscriber.close()
        broker.close()
    for got in (lines, arrived):
        keys = [(e["camera"], e["frame"]) for e in got]
        assert len(keys) == len(set(keys)) == 70  # once each
        for camera, count in (("line", 40), ("shelf", 30)):
            assert [f for c, f in keys if c == camera] == list(range(count))  # in order
    assert {json.dumps(e, sort_keys=True) for e in lines} == \
        {json.dumps(e, sort_keys=True) for e in arrived}
    assert lines[0]["top"][0]["label"] and lines[0]["latency_ms"] > 0


def test_a_broker_restart_loses_nothing_once_it_is_back(tmp_path):
    """Events sent while the broker is down wait (counted) and go out when it is back; the
    subscriber's persistent session gets them all."""
    from tests.helpers.mqtt import Broker, Subscriber
    from vitedge.runtime.events import MqttEvents, MqttTarget

    broker = Broker(tmp_path)
    subscriber = Subscriber(broker.port, "vitedge/restart")
    publisher = MqttEvents(MqttTarget("127.0.0.1", broker.port, "vitedge/restart"), qos=1)
    assert publisher.wait_connected(10)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            publisher.send({"camera": "cam", "frame": sent})
            sent += 1
            time.sleep(0.005)

    try:
        send(50)
        broker.stop()
        time.sleep(0.5)
        send(50)  # the broker is down
        during = publisher.counters()["buffered"]
        broker.start()
        assert publisher.wait_connected(15) and subscriber.subscribed.wait(15)
        send(50)
        arrived = subscriber.wait_for(150, timeout=20)
        counters = publisher.counters()
    finally:
        publisher.close()
        subscriber.close()
        broker.close()
    frames = [e["frame"] for e in arrived]
    assert during >= 45 and counters["lost"] == 0 and counters["reconnects"] >= 1
    assert set(frames) == set(range(150)), sorted(set(range(150)) - set(frames))
    duplicates = len(frames) - len(set(frames))  # QoS 1: a message in flight at the stop
    assert duplicates <= 5, duplicates


@pytest.mark.parametrize("args, message", [
    (["--source", "a=F", "--source", "a=F"], "two cameras are named 'a'"),
    (["--source", "door cam=x.avi"], "camera name 'door cam' must be"),
    (["--source", "a=/no/such/video.avi", "--source", "b=/no/such/other.avi"],
     "no such file or folder: /no/such/video.avi"),
    (["--sources", "cameras.toml"], "cameras.toml: no such file or folder: /nowhere.avi"),
    (["--sources", "bad.toml"], "unknown key 'url'"),
    (["--source", "a=F", "--mqtt", "localhost:1883"], "is not HOST[:PORT]/TOPIC"),
    (["--source", "a=F", "--source", "b=F", "--output", "o.mp4"], "--output and --display show one camera"),
    (["--source", "a=F", "--events", "-", "--json"], "would both write to standard output"),
])
def test_bad_camera_lists_are_one_line(demo_fp32, files, tmp_path, capsys, monkeypatch,
                                       args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cameras.toml").write_text('[[camera]]\nname = "a"\nuri = "/nowhere.avi"\n')
    (tmp_path / "bad.toml").write_text('[[camera]]\nname = "a"\nurl = "x"\n')
    args = [a.replace("=F", f"={files['video']}") for a in args]
    code, _, err = run_cli(["run", str(demo_fp32), *args], capsys)
    assert code in (1, 2) and "Traceback" not in err, err
    assert message in err, err
    assert len([line for line in err.strip().splitlines() if line.strip()]) <= 2, err


def test_removing_an_unknown_camera_and_adding_one_twice_are_refused(demo_fp32, files):
    with vitedge.open(demo_fp32) as pipe:
        multi = pipe.multi_stream({"line": str(files["video"])})
        with pytest.raises(VitedgeError, match="no camera named 'gate'"):
            multi.remove("gate")
        with pytest.raises(VitedgeError, match="already running"):
            multi.add("line", str(files["folder"]))
        multi.add("shelf", str(files["folder"]))  # while it runs, cameras come and go
        seen: dict[str, int] = {}
        for r in multi:
            seen[r.camera] = seen.get(r.camera, 0) + 1
            if r.camera == "line" and r.number == 5:
                multi.remove("line")
        assert seen["shelf"] == 30 and 6 <= seen["line"] < 40


def test_cameras_run_from_the_command_line_with_a_table(demo_fp32, files, tmp_path):
    toml = tmp_path / "cameras.toml"
    toml.write_text(f'[[camera]]\nname = "line"\nuri = "{files["video"]}"\nfps = 100\n'
                    f'[[camera]]\nname = "shelf"\nuri = "{files["folder"]}"\ncolor = "rgb"\n')
    command = [sys.executable, "-m", "vitedge", "run", str(demo_fp32), "--sources", str(toml),
               "--batch", "2", "--max-wait-ms", "5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "line" in result.stdout and "shelf" in result.stdout and "latency p50" in result.stdout
    assert "70 frames" in result.stdout
    summary = json.loads(subprocess.run(command + ["--json"], capture_output=True, text=True,
                                        timeout=120, cwd=ROOT).stdout)
    assert summary["frames"] == 70 and set(summary["batch_sizes"]) <= {"1", "2"}
    line = next(c for c in summary["cameras"] if c["camera"] == "line")
    assert line["processed"] == 40 and line["dropped"] == 0 and line["capped"] == 0


@pytest.mark.gpu
def test_an_engine_takes_batches_up_to_its_profile(demo_fp32, files, tmp_path):
    """TensorRT: batches of up to the engine's profile max (needs a GPU and TensorRT)."""
    from vitedge.deploy import BuildOptions, build

    engine = tmp_path / "m.engine"
    build(demo_fp32, engine, BuildOptions(precision="fp16", backend="tensorrt",
                                          profile="desktop-rtx", batch="1:2:4"))
    with vitedge.open(engine) as pipe:
        seen = Recording(pipe.model)
        cameras = {f"c{i}": str(files["video"]) for i in range(6)}
        results = list(pipe.multi_stream(cameras))
    assert len(results) == 240 and max(seen.sizes) == 4


def test_per_camera_statistics_keep_their_memory_flat():
    """Latency samples live in ring buffers: a camera that runs for days does not grow them
    (RSS over 50,000 frames: benchmarks/cameras.py)."""
    from vitedge.runtime.cameras import CameraStats
    from vitedge.runtime.stats import KEEP_SAMPLES

    stats = CameraStats("a", "video")
    for i in range(KEEP_SAMPLES + 500):
        stats.latency.add({"latency": float(i)}, 1)
    kept = stats.latency.samples["latency"]
    assert len(kept) == KEEP_SAMPLES and kept[-1] == KEEP_SAMPLES + 499
