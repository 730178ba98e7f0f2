"""OpenVINO as a `Backend`: vitedge's FP32 or INT8 Q/DQ graph as an OpenVINO IR
(`MODEL.PRECISION.ov.xml` + `.ov.bin`), run on the CPU in what its precision names: fp32 in
FP32, bf16 in BF16 (CPUs with AVX-512 BF16 or AMX), int8 in INT8 on VNNI / AMX (exactly on
AVX2 with 7-bit weights) with its float parts in BF16 only where that measured faster at
build; verified at build like every backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.backends.base import Backend, BuildRequest, BuiltArtifact, Check, Runner
from vitedge.backends.openvino.settings import OpenVINOSettings
from vitedge.errors import VitedgeError
from vitedge.precisions import BF16, FP16, FP32, INT8

if TYPE_CHECKING:
    from vitedge.profiles import Profile

BUILDS = (FP32, BF16, FP16, INT8)
"""The graphs OpenVINO's CPU plugin builds."""

class OpenVINOBackend(Backend):
    name = "openvino"
    product = "OpenVINO"
    suffix = ".ov.xml"
    build_step = "openvino convert"
    runner = "vitedge.backends.openvino.runner:OpenVINORunner"
    settings = ("openvino", OpenVINOSettings)
    default_profile = "cpu-openvino"
    runs_on_cpu = True
    computes_from_fp32 = ("fp32", "bf16")

    def version(self) -> str | None:
        try:
            import openvino
        except ImportError:
            return None
        return str(openvino.__version__).split("-")[0]

    def unavailable(self) -> str | None:
        return None if self.version() else "OpenVINO is not installed (pip install openvino)"

    def require(self) -> None:
        from vitedge.backends.openvino.build import require_openvino

        require_openvino()

    def device(self) -> str:
        import os

        from vitedge.backends.cpu_int8 import cpu_name

        return f"CPU: {cpu_name()}, {os.cpu_count()} cores (OpenVINO)"

    def machine_facts(self) -> dict[str, Any]:
        if self.version() is None:
            return {}  # not installed (a Jetson, a Pi): `bench` runs without it
        import openvino as ov

        from vitedge.backends.openvino.runner import cpu_capabilities

        return {"openvino_cpu_capabilities": cpu_capabilities(ov.Core())}

    def doctor(self) -> list[Check]:
        version = self.version()
        if version is None:
            return [Check("openvino", False, "not installed",
                          "x86 CPUs with AVX-512 / AMX (Zen 4+, Xeon, Core Ultra): pip install "
                          "'vitedge[openvino]'")]
        import openvino as ov

        from vitedge.backends.openvino.runner import cpu_capabilities

        core = ov.Core()
        caps = cpu_capabilities(core)
        bf16 = ("--precision bf16 runs here; an INT8 build's float parts in BF16 where measured "
                "faster" if "BF16" in caps else "no BF16 arithmetic: fp32 and int8 only")
        return [Check("openvino", True, f"{version}: devices {', '.join(core.available_devices)}; "
                                        f"CPU computes {', '.join(caps)} ({bf16})")]

    # --- precisions ------------------------------------------------------------------------

    def precision_column(self, profile: Profile) -> str:
        return "openvino"

    # --- artifacts -------------------------------------------------------------------------

    def claims(self, path: Path) -> bool:
        """A vitedge OpenVINO IR: an .xml whose runtime information carries a manifest."""
        if not path.name.endswith(".xml") or not path.is_file():
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
                f.seek(max(0, path.stat().st_size - (1 << 20)))
                tail = f.read()  # the runtime information comes after the layers
        except OSError:
            return False
        return b"<net " in head and b"vitedge" in tail

    def load(self, path: str | Path, threads: int | None = None, device: str | None = None,
             cuda_graph: bool = False) -> Runner:
        from vitedge.backends.openvino.runner import OpenVINORunner

        if cuda_graph:
            raise VitedgeError(f"{Path(path).name} is an OpenVINO IR: CUDA graphs are for "
                               "TensorRT engines", "drop cuda_graph")
        return OpenVINORunner(path, threads, device)

    def describe(self, path: Path) -> dict[str, Any]:
        import json

        from vitedge.backends.openvino.build import read_ir, weights_path

        model, manifest, info = read_ir(path)
        io = {kind: [{"name": p.get_any_name(), "shape": str(p.get_partial_shape()),
                      "dtype": np.dtype(p.get_element_type().to_dtype()).name} for p in ports]
              for kind, ports in (("inputs", model.inputs), ("outputs", model.outputs))}
        return {"artifact": str(path), "size_bytes": self.artifact_size(path),
                "weights": weights_path(path).name, "precision": manifest.precision,
                "manifest": json.loads(manifest.to_json()), "openvino": {**info, **io},
                "verification": info.get("verification") or {}}

    def artifact_size(self, path: Path) -> int:
        from vitedge.backends.openvino.build import weights_path

        return path.stat().st_size + weights_path(path).stat().st_size

    def inspect_rows(self, description: dict[str, Any]) -> list[tuple[str, str]]:
        from vitedge.backends.openvino.runner import runs_as_words

        d = description["openvino"]
        bits = d.get("int8_weight_bits")
        io = [(kind, ", ".join(f"{v['name']} {v['shape']} {v['dtype']}" for v in d[kind]))
              for kind in ("inputs", "outputs")]
        floats = d.get("float_parts") or f"precision hint {d.get('precision_hint', 'auto')}"
        measured = d.get("float_parts_ms")
        if measured:
            floats += " (measured at build: " + ", ".join(
                f"{k} {v:.2f} ms" for k, v in sorted(measured.items(), key=lambda kv: kv[1])) + ")"
        return [("built", f"OpenVINO {d.get('openvino_version', '')}, {description['precision']},"
                          f" float parts {floats}"
                          + (f", INT8 weights {bits}-bit (exact on every CPU)" if bits else "")),
                *io, ("weights", f"{description['weights']} (sha256 {d['bin_sha256'][:16]}...)"),
                *([("runs as", "at build: " + runs_as_words(d["runs_as"]))]
                  if d.get("runs_as") else [])]

    # --- build -----------------------------------------------------------------------------

    def build(self, request: BuildRequest, path: Path) -> BuiltArtifact:
        from vitedge.backends.openvino.build import build_openvino

        notes = (["--timing-cache applies to TensorRT builds only"]
                 if request.timing_cache else [])
        if request.manifest.precision not in BUILDS:
            raise VitedgeError(f"OpenVINO on the CPU runs fp32, bf16, fp16 and int8 graphs, not "
                               f"{request.manifest.precision}", "--precision int8 or fp32")
        built = build_openvino(request.model, path, request.manifest, request.profile)
        graph = ("its Q/DQ graph (7-bit weights) computed in float"
                 if request.manifest.precision == "int8" else "the ONNX model it was built from")
        notes += built.notes
        return BuiltArtifact(path, built.graph, graph, {"openvino": dict(built.info)}, notes,
                             state=(built, request.profile))

    def load_built(self, built: BuiltArtifact) -> Runner:
        """The runner verification uses; what OpenVINO made of the graph on this CPU (which
        layers run in INT8, BF16, FP32) goes into the build record and the notes."""
        from vitedge.backends.openvino.runner import WEIGHTED, runs_as, runs_as_words

        artifact, profile = built.state
        threads = profile.section("openvino", OpenVINOSettings).threads
        runner = self.load(built.path, threads or None)
        found = runs_as(runner.compiled)  # type: ignore[attr-defined]
        if artifact.info.get("runs_as") != found:
            artifact.info["runs_as"] = built.details["openvino"]["runs_as"] = found
            int8 = sum(n for k, n in found.get("i8", {}).items() if k in WEIGHTED)
            quantized = artifact.info.get("quantized_layers", 0)
            built.notes.append(f"OpenVINO runs on this CPU: {runs_as_words(found)}")
            if quantized and int8 < quantized:
                built.notes.append(f"{quantized - int8} of the {quantized} quantized layers run "
                                   "in float here, not INT8 (verification measured the result)")
        return runner

    def record(self, built: BuiltArtifact, verification: dict[str, Any]) -> None:
        from vitedge.backends.openvino.build import write_ir

        artifact, _ = built.state
        artifact.info["verification"] = verification
        write_ir(artifact, built.path)

    def finish(self, built: BuiltArtifact, final: Path) -> None:
        """The weights file first, the .xml (what names the artifact) last."""
        from vitedge.backends.openvino.build import weights_path
        from vitedge.fileio import publish

        publish(weights_path(built.path), weights_path(final))
        publish(built.path, final)

    def profile_rows(self, profile: Profile) -> list[tuple[str, str]]:
        s = profile.section("openvino", OpenVINOSettings)
        floats = ("BF16 where the CPU has it and it measures faster, else FP32"
                  if s.precision_hint == "auto" else s.precision_hint.upper())
        return [("openvino", f"threads {s.threads or 'automatic'}, an INT8 build's float parts "
                             f"{floats} (fp32 computes in FP32)")]
