"""A backend that lives in this one folder and nowhere else: ONNX Runtime with only its
basic graph optimizations (no vitedge fusions, no INT8 re-encoding), its artifact a plain
ONNX file `.basic.onnx` with the manifest inside. It really runs: build, verify, inspect,
bench, serve and the profiles use it through `vitedge.backends.register` alone
(tests/test_backend_registry.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Backend, BuildRequest, BuiltArtifact, Check, Runner, TensorInfo
from vitedge.errors import VitedgeError

NAME = "ort-basic"
LEVELS = ("basic", "none")


@dataclass(frozen=True)
class BasicSettings:
    """A profile's `[ort_basic]` table."""

    optimization: str = "basic"

    def __post_init__(self) -> None:
        if self.optimization not in LEVELS:
            raise VitedgeError(f"ort_basic.optimization must be one of {', '.join(LEVELS)}")


class BasicRunner(Runner):
    backend = NAME
    concurrent = True

    def __init__(self, path: str | Path):
        from vitedge.manifest import manifest_from_file
        from vitedge.sessions import ort_session

        self.path = Path(path)
        manifest = manifest_from_file(self.path)
        if manifest is None:
            raise VitedgeError(f"{self.path} has no vitedge manifest")
        self.manifest, self.warnings = manifest, []
        self.session = ort_session(self.path, optimization="none")
        self.inputs = [TensorInfo(v.name, tuple(v.shape), v.type) for v in self.session.get_inputs()]
        self.outputs = [TensorInfo(v.name, tuple(v.shape), v.type) for v in self.session.get_outputs()]

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._check_open()
        dtype = np.uint8 if self.manifest.input == "frames" else np.float32
        values = self.session.run(None, {self.input_name: np.asarray(x, dtype)})
        return dict(zip(self.output_names, values, strict=True))

    def _release(self) -> None:
        self.session = None


class BasicBackend(Backend):
    name = NAME
    product = "ONNX Runtime (basic optimizations)"
    suffix = ".basic.onnx"
    build_step = "ort-basic build"
    runner = "tests.plugins.ort_basic:BasicRunner"
    onnx_artifact = True
    settings = ("ort_basic", BasicSettings)

    def claims(self, path: Path) -> bool:
        from vitedge.backends import built_by
        from vitedge.onnx_file import read_onnx_metadata

        try:
            return built_by(read_onnx_metadata(path)) == self.name
        except (ValueError, OSError):
            return False

    def doctor(self) -> list[Check]:
        return [Check(self.name, True, "the test suite's one-folder backend")]

    def build(self, request: BuildRequest, path: Path) -> BuiltArtifact:
        import tempfile

        import onnx

        from vitedge.manifest import set_onnx_manifest
        from vitedge.sessions import ort_session

        level = request.profile.ort_basic.optimization
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "m.onnx"
            ort_session(request.model, optimization=level, saved_model=optimized)
            model = onnx.load(str(optimized))
        manifest = request.manifest
        manifest.source = {**manifest.source, "backend": self.name, "optimization": level}
        set_onnx_manifest(model, manifest)
        path.write_bytes(model.SerializeToString())
        return BuiltArtifact(path, request.model.read_bytes(), "the ONNX model it was built from",
                             {self.name: {"optimization": level}}, state=(model, manifest))

    def record(self, built: BuiltArtifact, verification: dict[str, Any]) -> None:
        from vitedge.manifest import set_onnx_manifest

        model, manifest = built.state
        manifest.source = {**manifest.source, "verification": verification}
        set_onnx_manifest(model, manifest)
        built.path.write_bytes(model.SerializeToString())

    def inspect_rows(self, description: dict[str, Any]) -> list[tuple[str, str]]:
        return [("built", f"{self.name}, {description.get('optimization')} optimizations")]
