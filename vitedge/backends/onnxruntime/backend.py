"""ONNX Runtime as a `Backend`: the embedded default, on the CPU (and ONNX Runtime's CUDA /
TensorRT providers where an onnxruntime build has them). Its artifact is an ONNX model
(`.ort.onnx`) that carries its manifest; plain vitedge exports and quantized graphs run
here too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.backends.base import (
    Backend,
    BuildRequest,
    BuiltArtifact,
    Check,
    Runner,
    TensorInfo,
    TritonModel,
)
from vitedge.backends.onnxruntime.settings import OnnxRuntimeSettings
from vitedge.errors import VitedgeError

if TYPE_CHECKING:
    from vitedge.profiles import Profile


@dataclass
class Int8KernelCheck:
    """What ONNX Runtime's integer kernels on this CPU make of an INT8 Q/DQ graph."""

    as_is: Any
    """`vitedge.compare.Agreement` with FP32 of the graph as written (plain ONNX Runtime)."""
    as_run: Any
    """The same with the CPU-exact weights vitedge's runtime uses."""
    note: str | None = None


def artifact_is_large(model: Any) -> bool:
    from vitedge.graph import needs_external_data

    return needs_external_data(model)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    product = "ONNX Runtime"
    suffix = ".ort.onnx"
    build_step = "onnxruntime optimize"
    runner = "vitedge.backends.onnxruntime.runner:OnnxRuntimeRunner"
    onnx_artifact = True
    settings = ("onnxruntime", OnnxRuntimeSettings)
    runs_on_cpu = True

    def version(self) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return None
        return str(onnxruntime.__version__)

    def unavailable(self) -> str | None:
        return None if self.version() else "onnxruntime is not installed (pip install onnxruntime)"

    def device(self) -> str:
        import os

        from vitedge.backends.cpu_int8 import cpu_int8, cpu_name

        cpu = cpu_int8()
        extensions = f" ({', '.join(cpu.features)})" if cpu.arch == "aarch64" else ""
        return f"CPU: {cpu_name()}, {os.cpu_count()} cores, INT8 kernels {cpu.kernel}{extensions}"

    def machine_facts(self) -> dict[str, Any]:
        from vitedge.backends.cpu_int8 import cpu_int8, cpu_name

        cpu = cpu_int8()
        return {"cpu": cpu_name(), "cpu_features": list(cpu.features),
                "int8_kernels": cpu.kernel, "int8_saturates": cpu.saturates}

    def cpu_exact(self, model: Any) -> Any:
        """A raw INT8 Q/DQ model (an onnx.ModelProto, in place) with the weights ONNX
        Runtime's integer kernels compute exactly on every CPU, as this backend runs it."""
        from vitedge.backends.onnxruntime.int8 import cpu_exact_graph

        return cpu_exact_graph(model)

    def doctor(self) -> list[Check]:
        version = self.version()
        if version is None:
            checks = [Check("onnxruntime", False, "missing", "pip install onnxruntime")]
        else:
            import onnxruntime

            providers = ", ".join(p.replace("ExecutionProvider", "")
                                  for p in onnxruntime.get_available_providers())
            checks = [Check("onnxruntime", True, f"{version} (providers: {providers})")]
        from vitedge.backends.cpu_int8 import cpu_int8, cpu_name

        return [*checks, Check("cpu", True, f"{cpu_name()}: {cpu_int8().describe()}")]

    # --- artifacts -------------------------------------------------------------------------

    def claims(self, path: Path) -> bool:
        """A vitedge ONNX model: an export, a quantized graph, or this backend's artifact."""
        from vitedge.manifest import MANIFEST_KEY
        from vitedge.onnx_file import read_onnx_metadata

        try:  # what the file is, not whether it is intact: the runner checks that
            metadata = read_onnx_metadata(path)
        except (ValueError, OSError):
            return False
        if MANIFEST_KEY not in metadata:
            return False
        from vitedge.backends import built_by

        return built_by(metadata) in (None, self.name)

    def load(self, path: str | Path, threads: int | None = None, device: str | None = None,
             cuda_graph: bool = False) -> Runner:
        from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner

        if cuda_graph:
            raise VitedgeError(f"{Path(path).name} is an ONNX model: CUDA graphs are for "
                               "TensorRT engines", "drop cuda_graph, or build an engine")
        return OnnxRuntimeRunner(path, threads, use_gpu=device == "gpu")

    def inspect_rows(self, description: dict[str, Any]) -> list[tuple[str, str]]:
        src = description
        bits = (", INT8 weights 7-bit (exact on every CPU)" if src.get("int8_weight_bits") == 7
                else "")
        return [("built", f"{src['backend']} {src.get('onnxruntime_version', '')}, profile "
                          f"{src.get('profile')}{bits}")]

    def triton_model(self, artifact: Path) -> TritonModel:
        """onnxruntime_onnx: the model as it is; a raw INT8 Q/DQ graph with the weights
        ONNX Runtime's integer kernels compute exactly on every CPU, as vitedge.open runs it."""
        import onnx

        from vitedge.graph import load_onnx
        from vitedge.manifest import require_manifest, set_onnx_manifest

        model = load_onnx(artifact)
        manifest = require_manifest(model, artifact)
        notes, payload = [], artifact
        if manifest.source.get("backend") == self.name:
            notes.append(f"a `vitedge build` artifact, optimized by ONNX Runtime "
                         f"{manifest.source.get('onnxruntime_version', '')}: Triton's ONNX "
                         "Runtime backend should be that version or newer (or export the .onnx "
                         "it was built from)")
        elif manifest.precision == "int8":
            from vitedge.backends.onnxruntime.int8 import WEIGHT_BITS, cpu_exact_graph

            cpu_exact_graph(model)
            manifest.source = {**manifest.source, "int8_weight_bits": WEIGHT_BITS}
            set_onnx_manifest(model, manifest)
            if artifact_is_large(model):
                raise VitedgeError(f"{artifact.name} is an INT8 Q/DQ graph over 2 GB; Triton's "
                                   "ONNX Runtime backend needs its CPU-exact encoding",
                                   "build it first (vitedge build --backend onnxruntime) and "
                                   "export the artifact")
            payload = model.SerializeToString()
            notes.append(f"INT8 weights re-encoded to {WEIGHT_BITS} bits, which ONNX Runtime's "
                         "integer kernels compute exactly on CPUs without VNNI too")

        def info(v: Any) -> TensorInfo:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            return TensorInfo(v.name, tuple(d.dim_value or -1 for d in t.shape.dim), dtype)

        return TritonModel("onnxruntime_onnx", "model.onnx", payload, manifest,
                           [info(model.graph.input[0])],
                           [info(o) for o in model.graph.output if o.name == manifest.output_name],
                           notes=notes)

    # --- build -----------------------------------------------------------------------------

    def build(self, request: BuildRequest, path: Path) -> BuiltArtifact:
        from vitedge.backends.cpu_int8 import cpu_int8
        from vitedge.backends.onnxruntime.build import build_onnxruntime
        from vitedge.graph import load_onnx

        notes = (["--timing-cache applies to TensorRT builds only"]
                 if request.timing_cache else [])
        built = build_onnxruntime(request.model, path, request.profile)
        int8 = built.manifest.precision == "int8"
        graph = ("its Q/DQ graph (7-bit weights) computed in float" if int8 else
                 "the ONNX model it was built from")
        return BuiltArtifact(path, built.graph, graph, {"onnxruntime": built.details}, notes,
                             portable_graph=load_onnx(request.model) if int8 else None,
                             cpu=cpu_int8().to_dict(), state=(built, request.profile))

    def load_built(self, built: BuiltArtifact) -> Runner:
        _, profile = built.state
        threads = profile.section("onnxruntime", OnnxRuntimeSettings).threads
        return self.load(built.path, threads or None)

    def record(self, built: BuiltArtifact, verification: dict[str, Any]) -> None:
        from vitedge.graph import save_onnx
        from vitedge.manifest import set_onnx_manifest

        artifact, _ = built.state
        manifest = artifact.manifest
        manifest.source = {**manifest.source, "verification": verification}
        set_onnx_manifest(artifact.model, manifest)
        save_onnx(artifact.model, built.path, external=artifact.external)

    def finish(self, built: BuiltArtifact, final: Path) -> None:
        from vitedge.graph import publish_onnx

        publish_onnx(built.path, final)  # its data file first, where it has one

    def disagreement(self, verification: Any, built: BuiltArtifact) -> str:
        cpu = verification.cpu or {}
        if cpu.get("saturates"):
            from vitedge.backends.onnxruntime.int8 import WEIGHT_MAX, largest_integer_weight

            largest = largest_integer_weight(built.state[0].model)
            if largest > WEIGHT_MAX:
                return (f"this CPU's ONNX Runtime integer kernels ({cpu.get('kernel')}, no VNNI) "
                        f"add products in saturating 16-bit lanes and the artifact has weights "
                        f"up to {largest}")
        return ("ONNX Runtime's optimized artifact computes something else than the graph it "
                "was built from (a rewrite or kernel is wrong); please report it")

    def check_int8(self, reference: np.ndarray, quantized: Any, x: np.ndarray,
                   in_float: Any) -> Int8KernelCheck:
        """An INT8 Q/DQ graph against FP32 (`reference`) on ONNX Runtime's integer kernels
        on this CPU: as the graph stands (what plain ONNX Runtime runs) and with vitedge's
        CPU-exact weights (what vitedge's runtime runs); where the kernels lose what the
        graph in float (`in_float`) keeps, a note says so and why."""
        import onnx

        from vitedge.backends.cpu_int8 import cpu_int8
        from vitedge.backends.onnxruntime.int8 import seven_bit_weights
        from vitedge.compare import agreement
        from vitedge.sessions import graph_output

        exact = onnx.ModelProto()
        exact.CopyFrom(quantized)
        seven_bit_weights(exact)
        as_is = agreement(reference, graph_output(quantized, x))
        as_run = agreement(reference, graph_output(exact, x))
        note = None
        lost = in_float.top1_agreement - as_is.top1_agreement
        if lost > 0.005 or as_is.mean_kl > 3 * max(in_float.mean_kl, 1e-6):
            cpu = cpu_int8()
            why = (f"this CPU's kernels ({cpu.kernel}, no VNNI) add products in saturating "
                   "16-bit lanes" if cpu.saturates else "unexpected on this CPU; please report it")
            note = (f"on this CPU, ONNX Runtime's integer kernels run this 8-bit graph at "
                    f"{as_is.top1_agreement:.1%} top-1 agreement with FP32 against "
                    f"{in_float.top1_agreement:.1%} for the graph in float: {why}. vitedge's "
                    f"runtime and `vitedge build` use 7-bit weights there: "
                    f"{as_run.top1_agreement:.1%}")
        return Int8KernelCheck(as_is, as_run, note)

    def profile_rows(self, profile: Profile) -> list[tuple[str, str]]:
        s = profile.section("onnxruntime", OnnxRuntimeSettings)
        extra = ("" if s.fusions else ", vitedge's rewrites off") + (
            "" if s.int8_weight_bits == 7 else ", 8-bit INT8 weights (not exact without VNNI)")
        return [("onnxruntime", f"threads {s.threads or 'automatic'}{extra}")]
