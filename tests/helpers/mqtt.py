"""A real MQTT broker for the tests: mosquitto from the OS packages, on a free loopback port,
with persistence (a subscriber's session outlives a restart), and a subscriber that records
what arrives."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto on 127.0.0.1:`port`; `stop()` and `start()` again keep its port and its
    persisted sessions."""

    def __init__(self, folder: Path):
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; `make test` "
                        "installs it where it can)")
        self.port = free_port()
        self.folder = folder
        self.config = folder / "mosquitto.conf"
        # as root, mosquitto drops to user "mosquitto", which cannot write the test's folder
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               f"persistence true\npersistence_location {folder}/\n{user}")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([str(MOSQUITTO), "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # mosquitto saves its sessions on SIGTERM
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.stop()


class Subscriber:
    """A persistent-session subscriber to TOPIC/# at QoS 1, recording (camera, frame)
    events in arrival order; it reconnects by itself."""

    def __init__(self, port: int, topic: str, client_id: str = "vitedge-test-subscriber"):
        import paho.mqtt.client as mqtt

        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.topic = topic

        def on_connect(client: Any, *_args: Any) -> None:
            client.subscribe(f"{topic}/#", qos=1)

        def on_subscribe(*_args: Any) -> None:
            self.subscribed.set()

        def on_message(_client: Any, _userdata: Any, message: Any) -> None:
            with self.lock:
                self.events.append(json.loads(message.payload))

        def on_disconnect(*_args: Any) -> None:
            self.subscribed.clear()

        self.client.on_connect, self.client.on_subscribe = on_connect, on_subscribe
        self.client.on_message, self.client.on_disconnect = on_message, on_disconnect
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber did not subscribe"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received()) < count:
            time.sleep(0.05)
        return self.received()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
