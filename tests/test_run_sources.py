"""Where `vitedge run` reads and writes, checked from outside: the annotated video plays at
its source's rate (OpenCV reads it back) with the overlay inside a small frame; every output
path gets its missing folders; a source that can never open on this machine fails at once,
one that may come says it waits for ever and how to bound it (`pipe.stream` takes the same
bound); `pipe.stream` names the file or stream of each result; `help(vitedge.open)` shows the
pipeline's options."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import vitedge
from tests.conftest import DEMO_TEST_IMAGES, run_cli
from tests.helpers.mqtt import free_port
from vitedge.options import PipelineOptions, SourceOptions
from vitedge.runtime.sources import FrameSource

cv2 = pytest.importorskip("cv2")
ROOT = Path(__file__).parents[1]
IMAGES = sorted(DEMO_TEST_IMAGES.rglob("*.png"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 12-frame, 25 fps, 112x112 video."""
    path = tmp_path_factory.mktemp("sources") / "door.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (112, 112))
    for p in IMAGES[:12]:
        writer.write(cv2.resize(cv2.imread(str(p)), (112, 112)))
    writer.release()
    return path


def green(frame: np.ndarray) -> np.ndarray:
    """Where the overlay is: clearly green pixels (the frames themselves are gray)."""
    b, g, r = (frame[..., i].astype(int) for i in range(3))
    return (g - np.maximum(b, r)) > 80


def test_the_video_plays_at_the_sources_rate_with_the_overlay_inside(demo_fp32, video,
                                                                     tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "out.avi"  # folders that are not there yet
    code, _, err = run_cli(["run", str(demo_fp32), "--source", str(video), "--output",
                            str(out)], capsys)
    assert code == 0, err
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 12
    for frame in frames:
        drawn = green(frame)
        assert drawn.sum() > 50  # the label and FPS are there
        cols = np.flatnonzero(drawn.any(axis=0))
        rows = np.flatnonzero(drawn.any(axis=1))
        assert cols.max() < frame.shape[1] - 2 and rows.max() < frame.shape[0] - 2  # not cut off
        assert cols.min() >= 1 and rows.min() >= 1


def test_every_output_gets_its_missing_folders_and_a_file_in_the_way_is_one_line(
        demo_fp32, video, tmp_path, capsys):
    events = tmp_path / "logs" / "today" / "events.jsonl"
    folder = tmp_path / "clips" / "door"
    code, _, err = run_cli(["run", str(demo_fp32), "--source", f"door={video}", "--events",
                            str(events), "--output-dir", str(folder)], capsys)
    assert code == 0, err
    assert len(events.read_text().splitlines()) == 12
    cap = cv2.VideoCapture(str(folder / "door.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)  # each camera at its own rate
    cap.release()
    (tmp_path / "taken").write_text("a file")
    code, _, err = run_cli(["run", str(demo_fp32), "--source", str(video), "--output",
                            str(tmp_path / "taken" / "out.avi")], capsys)
    assert code == 1 and "Traceback" not in err, err
    assert f"cannot make the folder {tmp_path / 'taken'}: a file is there" in err, err


@pytest.mark.skipif("GStreamer:                   NO" not in cv2.getBuildInformation(),
                    reason="this OpenCV has GStreamer: the pipeline could open")
def test_a_gstreamer_pipeline_on_an_opencv_without_it_fails_at_once(demo_fp32):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "vitedge", "run", str(demo_fp32), "--source",
                             "videotestsrc ! videoconvert ! appsink"], capture_output=True,
                            text=True, timeout=90, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "was built without GStreamer" in lines[0] and "WITH_GSTREAMER" in result.stderr
    assert "waiting" not in result.stderr
    assert time.monotonic() - started < 60


def test_a_stream_that_is_not_there_says_it_waits_for_ever_and_how_to_bound_it(demo_fp32):
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    heard: list[str] = []

    class Stop(Exception):
        pass

    def sleep(_seconds: float) -> None:
        raise Stop  # the first wait: enough to read what the user was told

    source = FrameSource(url, SourceOptions(), on_event=heard.append, sleep=sleep)
    with pytest.raises(Stop):
        next(iter(source))
    assert "waiting for it for ever" in heard[0] and "--reconnect-for" in heard[0], heard
    bounded = FrameSource(url, SourceOptions(reconnect_for=2), on_event=heard.append,
                          sleep=sleep)
    with pytest.raises(Stop):
        next(iter(bounded))
    assert "waiting for it up to 2 s" in heard[-1], heard
    with vitedge.open(demo_fp32) as pipe:  # the library takes the same bound
        started = time.monotonic()
        assert list(pipe.stream(url, reconnect_for=1.0)) == []
        assert time.monotonic() - started < 15
        assert "reconnect_for" in inspect.getdoc(pipe.stream)


def test_stream_results_name_their_file_or_stream(demo_fp32, video, tmp_path):
    folder = tmp_path / "shelf"
    folder.mkdir()
    for p in IMAGES[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "a-broken.png").write_bytes(b"not a png")  # left out: the names stay in step
    with vitedge.open(demo_fp32) as pipe:
        from_folder = list(pipe.stream(str(folder)))
        from_video = list(pipe.stream(str(video), max_frames=3))
        alone = [pipe(str(folder / p.name)) for p in IMAGES[:4]]
    assert [p.source for _, p in from_folder] == [str(folder / p.name) for p in IMAGES[:4]]
    assert [p.class_id for _, p in from_folder] == [p.class_id for p in alone]
    assert [p.source for _, p in from_video] == [str(video)] * 3
    assert from_folder[0][1].to_dict()["source"] == str(folder / IMAGES[0].name)


def test_help_of_open_shows_every_pipeline_option():
    signature = inspect.signature(vitedge.open)
    for f in fields(PipelineOptions):
        assert signature.parameters[f.name].default == f.default, f.name
    assert "options" in signature.parameters
    text = pydoc.render_doc(vitedge.open)
    assert "**options" not in text and "topk" in text and "streams" in text
    assert "Classes in the top-k of each prediction." in text  # the option's own help


def test_open_takes_options_and_keywords(demo_fp32):
    with vitedge.open(demo_fp32, PipelineOptions(topk=2), fast=True) as pipe:
        assert pipe.topk == 2 and pipe.fast
