"""What `vitedge run` sends out as events, checked from outside: standard output carries
the JSON lines alone; an MQTT run whose broker (a real mosquitto, stopped) never got its
events says how many and fails unless told to drop them, and the wait for it is not the
run's time; event filters (minimum score, label changes, rate) keep what an independent
reading of the unfiltered events says; capture times are Unix time everywhere; a folder
camera's events name their file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vitedge
from tests.conftest import DEMO_TEST_IMAGES, run_cli
from vitedge.errors import VitedgeError
from vitedge.runtime.event_filter import EventFilter

cv2 = pytest.importorskip("cv2")
ROOT = Path(__file__).parents[1]
IMAGES = sorted(DEMO_TEST_IMAGES.rglob("*.png"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 40-frame video (8 images, each held 5 frames: labels repeat) and a 6-image folder."""
    d = tmp_path_factory.mktemp("events")
    video = d / "door.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (28, 28))
    for p in IMAGES[::250][:8]:
        for _ in range(5):
            writer.write(cv2.imread(str(p)))
    writer.release()
    folder = d / "shelf"
    folder.mkdir()
    for p in IMAGES[500:506]:
        (folder / p.name).write_bytes(p.read_bytes())
    return {"video": video, "folder": folder}


def vitedge_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitedge", "run", *args], capture_output=True,
                          text=True, timeout=180, cwd=ROOT)


def test_events_to_stdout_are_json_lines_alone(demo_fp32, files, capsys):
    code, out, err = run_cli(["run", str(demo_fp32), "--source", f"door={files['video']}",
                              "--events", "-"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]  # nothing else on stdout
    assert [e["frame"] for e in events] == list(range(40))
    assert "40 frames" in err and "FPS in all" in err  # the summary went to stderr
    assert "from 1 camera in" in err and "1 cameras" not in err


def test_undelivered_mqtt_events_fail_the_run_unless_dropped(demo_fp32, files, tmp_path):
    from tests.helpers.mqtt import Broker

    broker = Broker(tmp_path)
    broker.stop()  # a real broker's port, with nobody listening on it now
    target = f"127.0.0.1:{broker.port}/vitedge/away"
    lines = tmp_path / "events.jsonl"
    # the run told to drop them goes beside the one that fails: both mostly wait for the broker
    dropping = subprocess.Popen([sys.executable, "-m", "vitedge", "run", str(demo_fp32),
                                 "--source", f"door={files['video']}", "--mqtt", target,
                                 "--mqtt-drop-undelivered", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        started = time.monotonic()
        failed = vitedge_run(str(demo_fp32), "--source", f"door={files['video']}", "--mqtt",
                             target, "--events", str(lines), "--json")
        wall = time.monotonic() - started
        out, err = dropping.communicate(timeout=180)
    finally:
        if dropping.poll() is None:
            dropping.kill()
            dropping.wait()
    assert failed.returncode == 1, failed.stderr[-2000:]
    said = [line for line in failed.stderr.splitlines() if line.strip()]
    assert f"error: 40 of 40 events were not delivered to the MQTT broker 127.0.0.1:{broker.port}" \
        in said[-1] and "Traceback" not in failed.stderr, failed.stderr
    summary = json.loads(failed.stdout)
    assert summary["events"]["mqtt"]["undelivered"] == 40
    captured = [json.loads(line)["captured"] for line in lines.read_text().splitlines()]
    assert len(captured) == 40
    # the run's time is its frames' (first capture to last result), not the >= 5 s spent
    # waiting for the broker at the start nor the flush at the end
    assert summary["seconds"] < max(captured) - min(captured) + 1.5 < wall - 5, \
        (summary["seconds"], max(captured) - min(captured), wall)

    assert dropping.returncode == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["events"]["mqtt"]["undelivered"] == 40
    assert any("40 of 40 events were not delivered" in w and "--mqtt-drop-undelivered" in w
               for w in summary["warnings"]), summary["warnings"]


def test_filters_keep_what_the_unfiltered_events_say_they_should(demo_fp32, files, tmp_path):
    from tests.helpers.mqtt import Broker, Subscriber

    everything = tmp_path / "all.jsonl"
    assert vitedge_run(str(demo_fp32), "--source", f"door={files['video']}", "--source",
                       f"shelf={files['folder']}", "--events", str(everything),
                       "--json").returncode == 0
    events = [json.loads(line) for line in everything.read_text().splitlines()]
    assert len(events) == 46
    # the reference: the rules applied by hand to the unfiltered events, camera by camera
    threshold = sorted(e["top"][0]["score"] for e in events)[len(events) // 2]
    expected, last = set(), {}
    for e in sorted(events, key=lambda e: (e["camera"], e["frame"])):
        label = e["top"][0]["label"]
        if e["top"][0]["score"] >= threshold and last.get(e["camera"]) != label:
            expected.add((e["camera"], e["frame"]))
            last[e["camera"]] = label
    assert 3 <= len(expected) < 23  # the filter really leaves events out

    broker = Broker(tmp_path)
    subscriber = Subscriber(broker.port, "vitedge/filtered")
    try:
        kept = tmp_path / "kept.jsonl"
        result = vitedge_run(str(demo_fp32), "--source", f"door={files['video']}", "--source",
                             f"shelf={files['folder']}", "--events", str(kept),
                             "--events-min-score", str(threshold), "--events-on-change",
                             "--mqtt", f"127.0.0.1:{broker.port}/vitedge/filtered", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        arrived = subscriber.wait_for(len(expected))
    finally:
        subscriber.close()
        broker.close()
    summary = json.loads(result.stdout)
    written = [json.loads(line) for line in kept.read_text().splitlines()]
    assert {(e["camera"], e["frame"]) for e in written} == expected
    assert {(e["camera"], e["frame"]) for e in arrived} == expected
    assert summary["events"]["filter"]["left_out"] == 46 - len(expected)
    assert summary["events"]["mqtt"]["delivered"] == len(expected)
    assert summary["events"]["mqtt"]["undelivered"] == 0


def test_a_rate_limit_spaces_each_cameras_events(demo_fp32, files, tmp_path):
    kept = tmp_path / "kept.jsonl"
    result = vitedge_run(str(demo_fp32), "--source", f"door={files['video']}", "--events",
                         str(kept), "--events-max-rate", "20", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    written = [json.loads(line) for line in kept.read_text().splitlines()]
    times = [e["captured"] for e in written]
    assert written[0]["frame"] == 0 and len(written) >= 1
    assert all(b - a >= 1 / 20 - 1e-3 for a, b in zip(times, times[1:], strict=False)), times
    left_out = json.loads(result.stdout)["events"]["filter"]["left_out"]
    assert left_out + len(written) == 40


def test_the_event_filter_rules_one_by_one():
    def event(camera, label, score, t):
        return {"camera": camera, "captured": t,
                "top": [{"class_id": 0, "label": label, "score": score}]}

    on_change = EventFilter(on_change=True)
    said = [on_change.keep(event(c, lab, 0.9, i)) for i, (c, lab) in enumerate(
        [("a", "bag"), ("a", "bag"), ("b", "bag"), ("a", "coat"), ("a", "bag"), ("b", "bag")])]
    assert said == [True, False, True, True, True, False] and on_change.left_out == 2
    rate = EventFilter(max_rate=2)  # one every 0.5 s at most, per camera
    said = [rate.keep(event(c, "bag", 0.9, t)) for c, t in
            [("a", 0.0), ("a", 0.3), ("b", 0.3), ("a", 0.5), ("a", 0.9), ("a", 1.01)]]
    assert said == [True, False, True, True, False, True]
    floor = EventFilter(min_score=0.5)
    assert [floor.keep(event("a", "bag", s, 0)) for s in (0.49, 0.5, 0.9)] == [False, True, True]
    embedding = {"camera": "a", "captured": 0.0, "embedding": {"dim": 2, "values": [0, 1]}}
    assert EventFilter(min_score=0.9, on_change=True).keep(embedding)
    with pytest.raises(VitedgeError, match="minimum score"):
        EventFilter(min_score=1.5)


def test_a_bad_filter_flag_is_one_line(demo_fp32, files, capsys):
    code, _, err = run_cli(["run", str(demo_fp32), "--source", f"a={files['video']}",
                            "--events-max-rate", "0"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "'--events-max-rate': 0.0 is not in the range x>0" in err, err


def test_capture_times_are_unix_time_and_folder_events_name_their_file(demo_fp32, files,
                                                                       tmp_path):
    before, mono_before = time.time(), time.monotonic()
    with vitedge.open(demo_fp32) as pipe:
        results = list(pipe.multi_stream({"shelf": str(files["folder"])}))
    after, mono_after = time.time(), time.monotonic()
    assert len(results) == 6
    for r in results:
        assert before <= r.captured <= after
        assert mono_before <= r.captured_monotonic <= mono_after
        assert r.latency_ms >= 0
    names = sorted(str(p) for p in files["folder"].iterdir())
    assert [r.prediction.source for r in results] == names
    lines = tmp_path / "e.jsonl"
    assert vitedge_run(str(demo_fp32), "--source", f"shelf={files['folder']}", "--events",
                       str(lines)).returncode == 0
    events = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [e["source"] for e in events] == names
