"""Loopback cameras for the camera tests: an HTTP MJPEG camera that can drop, stall, send
garbage or start late (tests/test_adversarial.py, tests/test_cameras.py)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import DEMO_TEST_IMAGES

GOOD_IMAGE = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[0]


class FlakyCamera:
    """An HTTP MJPEG camera on loopback that serves `frames` frames, then (`after`) is gone
    (port closed) for `outage` seconds and comes back for good; or keeps the connection
    open and sends nothing more (`stall`); or sends parts that are not JPEG (`garbage`).
    `late`: not there at all for that many seconds at first."""

    def __init__(self, frames: int, outage: float, back: bool = True, after: str = "drop",
                 late: float = 0.0, fps: float = 50.0, images: list[Path] | None = None) -> None:
        import cv2

        self.jpgs = [cv2.imencode(".jpg", np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1])[1]
                     .tobytes() for p in (images or [GOOD_IMAGE])]
        self.interval = 1.0 / fps
        self.frames, self.outage, self.back, self.after = frames, outage, back, after
        self.served = 0
        self._server = self._start(0)
        self.port = self._server.server_address[1]
        if late:
            self._server.shutdown()
            self._server.server_close()
            threading.Timer(late, lambda: setattr(self, "_server", self._start(self.port))).start()

    def _start(self, port: int) -> ThreadingHTTPServer:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                with_drop = camera.served < camera.frames
                try:
                    if camera.after != "drop" and camera.served >= camera.frames:
                        return self.do_GET_after()  # every later connection too
                    while not with_drop or camera.served < camera.frames:
                        jpg = camera.jpgs[camera.served % len(camera.jpgs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         b"%d\r\n\r\n" % len(jpg) + jpg + b"\r\n")
                        camera.served += 1
                        time.sleep(camera.interval)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if with_drop and camera.after == "drop":
                    threading.Thread(target=camera._outage, daemon=True).start()
                elif with_drop:
                    self.do_GET_after()

            def do_GET_after(self) -> None:
                junk = b"not a jpeg " * 40
                try:
                    while True:
                        if camera.after == "stall":
                            time.sleep(0.5)
                            continue
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(junk) + junk + b"\r\n")
                        time.sleep(0.02)
                except (BrokenPipeError, ConnectionResetError):
                    return

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _outage(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if not self.back:
            return
        time.sleep(self.outage)
        self._server = self._start(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
