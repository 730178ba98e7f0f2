"""A real NVIDIA Triton Inference Server process: found, started on loopback, waited for,
and stopped so that nothing stays behind (no server, no Python-backend stub process, no
shared-memory region).

Where `tritonserver` comes from, first found wins: $VITEDGE_TRITONSERVER, the
`nvidia-pytriton` wheel installed into the environment (its binary, with only the Python
backend, `make setup` puts it in .venv/triton), or a `tritonserver` on PATH (NGC containers,
JetPack's Triton). Three traps of the wheel are handled here: its Python backend stub must
sit beside the backend for the running Python version; it links `libpython3.X.so.1.0`, so
the running interpreter's own library directory goes first on LD_LIBRARY_PATH (else a
system Python of another patch level meets this one's standard library); and its stub was
built against NumPy 1 (a NumPy 2 array's output tensor comes back with the wrong size), so
the stub's interpreter reads NumPy 1 from `.venv/triton/stub-site` (`make setup` puts it
there) before the environment's own packages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import MissingDependency, VitedgeError
from vitedge.lifetime import scratch_folder

INSTALL_HINT = ("pip install --no-deps --target VENV/triton nvidia-pytriton==0.7.0 && pip install "
                "--no-deps --target VENV/triton/stub-site 'numpy<2' (make setup does)")
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
EXIT_TIMEOUT = 5
"""Seconds Triton waits at a stop for requests in flight and connected clients."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path
    """The backend directory tritonserver is pointed at."""
    libraries: tuple[Path, ...] = ()
    """Folders that go on LD_LIBRARY_PATH (the wheel's bundled libraries)."""
    python_path: tuple[Path, ...] = ()
    """Folders the Python-backend stub's interpreter reads first (the wheel's NumPy 1)."""
    source: str = ""


def _wheel_roots() -> list[Path]:
    """Where the nvidia-pytriton wheel may have been unpacked: `make setup`'s .venv/triton,
    or site-packages."""
    roots = [Path(sys.prefix) / "triton"]
    with contextlib.suppress(Exception):
        import site

        roots += [Path(p) for p in site.getsitepackages()]
    return roots


def find_triton() -> TritonInstall:
    """The tritonserver to run, or one MissingDependency saying how to get one."""
    env = os.environ.get("VITEDGE_TRITONSERVER")
    if env:
        binary = Path(env)
        if not binary.is_file():
            raise VitedgeError(f"VITEDGE_TRITONSERVER={env} is not a file")
        return TritonInstall(binary, binary.parent.parent / "backends", source="VITEDGE_TRITONSERVER")
    for root in _wheel_roots():
        tree = root / "pytriton" / "tritonserver"
        if (tree / "bin" / "tritonserver").is_file():
            stub_site = root / "stub-site"
            return TritonInstall(tree / "bin" / "tritonserver", tree / "backends",
                                 (root / "nvidia_pytriton.libs",),
                                 (stub_site,) if stub_site.is_dir() else (),
                                 source=f"nvidia-pytriton in {root}")
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        return TritonInstall(binary, Path("/opt/tritonserver/backends") if Path(
            "/opt/tritonserver/backends").is_dir() else binary.parent.parent / "backends",
            source="PATH")
    raise MissingDependency("serving needs NVIDIA Triton Inference Server's tritonserver",
                            f"{INSTALL_HINT}, or run in an NGC Triton container")


def _backend_folder(install: TritonInstall, work: Path) -> Path:
    """A backend directory whose Python backend has the stub for this Python version (the
    wheel keeps one stub per version apart); other backends of the install are linked."""
    folder = work / "backends"
    folder.mkdir()
    python = install.backends / "python"
    stubs = install.binary.parent.parent / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}"
    for backend in (install.backends.iterdir() if install.backends.is_dir() else []):
        if backend.name != "python":
            (folder / backend.name).symlink_to(backend)
    if python.is_dir():
        target = folder / "python"
        target.mkdir()
        for f in python.iterdir():
            if f.is_file():
                shutil.copy2(f, target / f.name)
        stub = stubs / "triton_python_backend_stub"
        if stub.is_file() and not (target / stub.name).exists():
            shutil.copy2(stub, target / stub.name)
    return folder


ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace",
              "logging")
"""Triton's API groups a stranger must not use: load and unload models, read their
configuration, map shared-memory regions of this machine, read statistics, start traces,
change the log settings (a verbose level fills the disk)."""
ADMIN_HEADER = "vitedge-admin-key"
API_HEADER = "vitedge-api-key"
KEY_PATTERN = r"[A-Za-z0-9_\-]{16,256}"


@dataclass(frozen=True)
class Access:
    """Who may use what: the admin APIs only with the header `vitedge-admin-key`, inference
    (with `api_key`) only with `vitedge-api-key`. The keys themselves are never printed,
    logged or put in an error message (this object's repr hides them)."""

    admin_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)

    def arguments(self) -> list[str]:
        """tritonserver's restricted-API arguments (Triton checks the header itself)."""
        args = []
        for groups, header, key in ((ADMIN_APIS, ADMIN_HEADER, self.admin_key),
                                    (("inference",), API_HEADER, self.api_key)):
            if key:
                args += [f"--http-restricted-api={','.join(groups)}:{header}={key}",
                         f"--grpc-restricted-protocol={','.join(groups)}:{header}={key}"]
        return args


def read_or_make_key(path: str | Path) -> str:
    """The key in the file at `path`; where there is none, a new random one written there,
    readable by this user alone. A key file others can read is refused."""
    import re
    import secrets
    import stat

    p = Path(path).expanduser()
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_urlsafe(32)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise VitedgeError(f"cannot write the key file {p}: {exc.strerror}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    from vitedge.inputs import require_regular_file

    require_regular_file(p, "key file")
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VitedgeError(f"the key file {p} can be read by other users of this machine; it "
                           "is not used", f"chmod 600 {p}")
    key = p.read_text(errors="replace").strip()
    if not re.fullmatch(KEY_PATTERN, key):
        raise VitedgeError(f"the key file {p} does not hold a key (16 to 256 letters, digits, "
                           "'-' or '_')", "remove it to have one made, or write one there")
    return key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """`with TritonServer(repository) as server:` a running tritonserver on `host` (loopback
    unless told otherwise) serving `repository`; `server.url` is its HTTP endpoint. Port 0
    takes a free one. The server runs in a process group of its own with its stubs, and is
    told to end if this process dies (Linux), so nothing outlives it."""

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log: Path | None = None
    """Where tritonserver writes its log; default: a temporary file, removed on stop."""
    models: tuple[str, ...] = ()
    """Load only these (explicit model control); empty: every model of the repository."""
    access: Access = field(default_factory=Access)
    """Which API groups need a key (see `Access`)."""
    process: Any = field(default=None, init=False)
    _work: Any = field(default=None, init=False)
    _log_file: Any = field(default=None, init=False)
    _shm_before: set[str] = field(default_factory=set, init=False)

    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint (what tritonclient.http takes)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log or Path(self._work.name) / "tritonserver.log"

    def start(self) -> TritonServer:
        install = find_triton()
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self._work = scratch_folder("triton-")
        backends = _backend_folder(install, Path(self._work.name))
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = {**os.environ,
               "LD_LIBRARY_PATH": os.pathsep.join(
                   [libdir, *map(str, install.libraries), os.environ.get("LD_LIBRARY_PATH", "")]),
               # the stub's interpreter ignores PYTHONPATH; vitedge's model.py reads this
               "VITEDGE_PYTHONPATH": os.pathsep.join(
                   [*map(str, install.python_path), *_site_paths()])}
        args = [str(install.binary), f"--model-repository={self.repository}",
                f"--backend-directory={backends}", f"--http-address={self.host}",
                f"--grpc-address={self.host}", f"--metrics-address={self.host}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", "--log-verbose=0",
                "--exit-on-error=true", "--strict-readiness=true",
                # a client still connected at a stop holds Triton's exit for its 30 s default
                f"--exit-timeout-secs={EXIT_TIMEOUT}", *self.access.arguments()]
        if self.models:
            args += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        self._shm_before = _shm_regions()
        try:
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - open while it runs
        except OSError as exc:
            self.stop()
            raise VitedgeError(f"cannot write the server log {self.log_path}: {exc.strerror}") from exc
        self.process = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True,
                                        preexec_fn=_end_with_parent)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                problem = self.last_error()
                self.stop()
                raise VitedgeError(f"tritonserver ended while starting: {problem}",
                                   "--log FILE keeps its whole log")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        problem = self.last_error()
        self.stop()
        raise VitedgeError(f"tritonserver was not ready after {READY_TIMEOUT:.0f} s: {problem}")

    def last_error(self) -> str:
        """The most telling error line of the server's log (one line)."""
        if self._log_file is not None:
            self._log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "no log"
        lines = [ln for ln in text.splitlines() if ln.startswith("E") or "error" in ln.lower()]
        useful = [ln for ln in lines if not any(w in ln for w in ("NVML", "DCGM", "Cuda", "CUDA"))]
        failed = [ln for ln in useful if "failed to" in ln or "Error" in ln]
        return ((failed or useful or ["no error logged"])[0])[-400:]

    def stop(self) -> None:
        """SIGTERM to the server (it unloads its models and ends their stubs), a wait, then
        SIGKILL for whatever is left of its process group; shared-memory regions the stubs
        left are removed; idempotent."""
        proc, self.process = self.process, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stubs left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for name in _shm_regions() - self._shm_before:
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
        if self._work is not None:
            self._work.cleanup()
            self._work = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (Linux's
    PR_SET_PDEATHSIG), so a killed `vitedge serve` leaves no server behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _shm_regions() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("triton_python_backend")}
    except OSError:
        return set()


def _site_paths() -> list[str]:
    """This environment's packages and vitedge itself, for the Python backend's models."""
    import site

    paths = [str(Path(__file__).parents[2])]  # the folder vitedge is imported from
    with contextlib.suppress(Exception):
        paths += site.getsitepackages()
    return paths
