"""OpenVINO as a backend, for real: vitedge's own FP32 and INT8 Q/DQ graphs built into an
OpenVINO IR, run through the one runner interface and checked against ONNX Runtime computing
the same graph; the 7-bit weight encoding that keeps OpenVINO's AVX2 kernels exact; the IR
refused when its weights change; and `vitedge build` with no backend named building for
every CPU backend here and keeping the one it measured fastest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from tests.conftest import DEMO_CALIBRATION, run_cli
from vitedge.backends import load_runner
from vitedge.compare import agreement
from vitedge.deploy import BuildOptions, build
from vitedge.sessions import graph_output

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def work(demo_fp32, tmp_path_factory):
    d = tmp_path_factory.mktemp("openvino")
    shutil.copy(demo_fp32, d / "m.onnx")
    return d


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_ir_computes_the_graph_it_was_built_from(work, demo_images, precision, capsys):
    out = work / f"m.{precision}.ov.xml"
    result = build(work / "m.onnx", out, BuildOptions(precision=precision,
                                                      data=str(DEMO_CALIBRATION),
                                                      backend="openvino"))
    assert result.backend == "openvino" and out.is_file() and out.with_suffix(".bin").is_file()
    assert result.verification["vs_graph"]["top1_agreement"] >= 0.99
    assert result.size_bytes == out.stat().st_size + out.with_suffix(".bin").stat().st_size
    graph = onnx.load(str(work / ("m.onnx" if precision == "fp32" else "m.int8.onnx")))
    if precision == "int8":
        from vitedge.backends.cpu_int8 import seven_bit_weights

        seven_bit_weights(graph)  # what the IR holds, and ONNX Runtime runs exactly too
    reference = graph_output(graph, demo_images, "none")
    with load_runner(out) as runner:
        assert runner.backend == "openvino" and runner.concurrent
        got = runner.infer(demo_images)
        floats = runner.float_parts  # what OpenVINO reports it computes the float parts in
        compiled = runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert floats == {"f32": "fp32", "bf16": "bf16"}[compiled]
    same = agreement(reference, got)
    if precision == "fp32":  # FP32 whatever the CPU: the graph's numbers to float rounding
        assert floats == "fp32" and result.float_parts == "fp32"
        assert same.relative <= 1e-4 and same.top1_agreement == 1.0, same.describe()
        assert result.verification["vs_graph"]["relative"] <= 1e-4  # and the build says so
    elif floats == "bf16":  # an INT8 build that measured BF16 float parts faster on this CPU
        assert "BF16" in runner.capabilities and "measured faster" in " ".join(result.notes)
        assert same.top1_agreement >= 0.99 and same.cosine > 0.999, same.describe()
    else:  # integer kernels with FP32 float parts: exactly the graph's Q/DQ arithmetic
        assert same.top1_agreement == 1.0 and same.cosine > 0.9999, same.describe()
    assert result.verification["float_parts"] == floats
    runs = result.details["openvino"]["runs_as"]  # which layers OpenVINO ran in what
    if precision == "int8":  # every Linear (4 a block), the patch projection and the head
        depth = len([n for n in onnx.load(str(work / "m.onnx")).graph.node
                     if n.op_type == "LayerNormalization"]) // 2  # 2 a block, 1 at the end
        assert sum(runs["i8"].get(k, 0) for k in ("FullyConnected", "Convolution")) \
            == 4 * depth + 2, runs
        assert not any("run in float" in n for n in result.notes)
    else:
        assert "i8" not in runs and "bf16" not in runs and "f32" in runs
    code, text, err = run_cli(["inspect", str(out), "--json"], capsys)
    assert code == 0, err
    shown = json.loads(text)
    assert shown["precision"] == precision and shown["openvino"]["bin_sha256"]
    assert shown["openvino"]["float_parts"] == floats
    assert shown["verification"]["vs_graph"]["top1_agreement"] >= 0.99
    code, text, err = run_cli(["predict", str(out), str(sorted(DEMO_CALIBRATION.rglob("*.png"))[0]),
                               "--json"], capsys)
    assert code == 0, err


def test_an_fp16_ir_builds_and_answers_to_the_graphs_output_name(work, demo_images):
    """OpenVINO names an fp16 model's compiled output after the Cast in front of it as well
    ('logits.fp16_out'), and may list that name first: the runner keeps the graph's name, so
    the build verifies and `infer` finds 'logits'. The IR computes the fp16 graph (whose
    Cast-wrapped float16 layers the CPU runs in FP32) as ONNX Runtime does, to FP16's
    rounding."""
    out = work / "m.fp16.ov.xml"
    result = build(work / "m.onnx", out, BuildOptions(precision="fp16", backend="openvino"))
    assert result.backend == "openvino" and result.verification["vs_graph"]["top1_agreement"] >= 0.99
    reference = graph_output(onnx.load(str(work / "m.fp16.onnx")), demo_images, "none")
    with load_runner(out) as runner:
        assert runner.output_names == [o.name for o in onnx.load(str(work / "m.fp16.onnx")).graph.output]
        got = runner.infer(demo_images)
    same = agreement(reference, got)
    assert same.top1_agreement >= 0.99 and same.cosine > 0.999, same.describe()


def test_an_ir_whose_layers_pass_a_megabyte_is_still_recognised(work, demo_images, tmp_path):
    """A deep (or merged) model's layers push the manifest, which OpenVINO writes at the end
    of the .xml, past the first megabyte: the IR is still a vitedge artifact."""
    from vitedge.backends import backend_of

    out = work / "m.fp32.ov.xml"
    if not out.is_file():
        build(work / "m.onnx", out, BuildOptions(precision="fp32", backend="openvino"))
    big = tmp_path / "big.ov.xml"
    text = out.read_text()
    first = text.index(">", text.index("<net ")) + 1  # inside <net>: a comment OpenVINO skips
    big.write_text(text[:first] + "<!--" + "x" * (2 << 20) + "-->" + text[first:])
    shutil.copy(out.with_suffix(".bin"), big.with_suffix(".bin"))
    assert big.stat().st_size > 2 << 20 and backend_of(big) == "openvino"
    with load_runner(big) as runner, load_runner(out) as same:
        np.testing.assert_array_equal(runner.infer(demo_images), same.infer(demo_images))


def test_8_bit_weights_are_what_openvinos_avx2_kernels_get_wrong(work, demo_images):
    """On a CPU without VNNI, OpenVINO's integer kernels saturate as ONNX Runtime's do; with
    the 7-bit encoding every CPU class computes the graph's numbers."""
    import openvino as ov

    from vitedge.backends.cpu_int8 import cpu_int8, seven_bit_weights

    build(work / "m.onnx", work / "q.int8.ov.xml", BuildOptions(
        precision="int8", data=str(DEMO_CALIBRATION), backend="openvino"))
    graph8 = onnx.load(str(work / "m.int8.onnx"))
    graph7 = onnx.ModelProto()
    graph7.CopyFrom(graph8)
    seven_bit_weights(graph7)
    core = ov.Core()
    results = {}
    for bits, graph in ((8, graph8), (7, graph7)):
        path = work / f"w{bits}.onnx"
        onnx.save(graph, str(path))
        compiled = core.compile_model(ov.convert_model(str(path)), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        got = compiled({0: demo_images})[compiled.outputs[0]]
        results[bits] = agreement(graph_output(graph, demo_images, "none"), got)
    assert results[7].top1_agreement == 1.0 and results[7].cosine > 0.9999
    if cpu_int8().saturates:
        assert results[8].cosine < results[7].cosine
    else:
        assert results[8].top1_agreement >= 0.99


def test_a_changed_or_missing_weights_file_is_refused_in_one_line(work, tmp_path, capsys):
    out = tmp_path / "m.fp32.ov.xml"
    build(work / "m.onnx", out, BuildOptions(precision="fp32", data=str(DEMO_CALIBRATION),
                                             backend="openvino"))
    weights = out.with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    image = str(sorted(DEMO_CALIBRATION.rglob("*.png"))[0])
    code, _, err = run_cli(["predict", str(out), image], capsys)
    assert code == 1 and "was changed or replaced" in err and len(err.strip().splitlines()) == 1
    weights.unlink()
    code, _, err = run_cli(["predict", str(out), image], capsys)
    assert code == 1 and "which is missing" in err and "Traceback" not in err


def test_build_without_a_backend_measures_every_cpu_backend_and_keeps_the_faster(work, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(work / "m.onnx", model)
    result = build(model, options=BuildOptions(precision="int8", data=str(DEMO_CALIBRATION)))
    measured = result.details["measured"]
    assert set(measured["backends_ms"]) == {"onnxruntime", "openvino"}
    fastest = min(measured["backends_ms"], key=measured["backends_ms"].get)
    assert result.backend == measured["kept"] == fastest
    assert "measured" in result.backend_reason and "measure" in result.steps
    assert {"verify (onnxruntime)", "verify (openvino)"} <= set(result.steps)
    suffix = {"onnxruntime": ".int8.ort.onnx", "openvino": ".int8.ov.xml"}[fastest]
    assert result.artifact == tmp_path / f"m{suffix}"
    left = {p.name for p in tmp_path.iterdir()}  # the other contender left nothing behind
    unkept = {"onnxruntime": {"m.int8.ov.xml", "m.int8.ov.bin"},
              "openvino": {"m.int8.ort.onnx"}}[fastest]
    assert not unkept & left, left
    with load_runner(result.artifact) as runner:  # the artifact records why it was kept
        assert runner.backend == fastest
    assert result.verification["chosen_by_measurement"]["kept"] == fastest


def test_doctor_and_profiles_show_openvino(capsys):
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["openvino"]["ok"] and "CPU" in checks["openvino"]["detail"]
    code, out, _ = run_cli(["profiles", "cpu-openvino", "--json"], capsys)
    profile = json.loads(out)
    assert profile["backend"] == "openvino" and profile["openvino"]["precision_hint"] == "auto"


def test_bf16_is_a_precision_of_its_own_where_the_cpu_computes_it(work, demo_images, capsys):
    """--precision bf16: the FP32 model computed in BF16, on a CPU that has BF16 arithmetic
    (OpenVINO's own capability list decides), its agreement with the FP32 graph shown; on a
    CPU without it, refused in one line. ONNX Runtime does not build it."""
    import openvino as ov

    from vitedge.backends.openvino.runner import cpu_capabilities

    out = work / "m.bf16.ov.xml"
    args = ["build", str(work / "m.onnx"), "--precision", "bf16", "--backend", "openvino",
            "--data", str(DEMO_CALIBRATION), "-o", str(out), "--json"]
    code, text, err = run_cli(args, capsys)
    if "BF16" not in cpu_capabilities(ov.Core()):
        assert code == 1 and "no BF16 arithmetic" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
        return
    assert code == 0, err
    result = json.loads(text)
    assert result["precision"] == "bf16" and result["float_parts"] == "bf16"
    assert result["verification"]["vs_graph"]["top1_agreement"] >= 0.99
    reference = graph_output(onnx.load(str(work / "m.onnx")), demo_images, "none")
    with load_runner(out) as runner:
        assert runner.manifest.precision == "bf16" and runner.float_parts == "bf16"
        assert runner.precision_label == "bf16"
        same = agreement(reference, runner.infer(demo_images))
    # BF16 arithmetic: agrees on the answer, yet differs from FP32 by more than its rounding
    assert same.top1_agreement >= 0.99 and same.cosine > 0.999, same.describe()
    assert same.relative > 1e-4, same.describe()
    code, text, err = run_cli(["inspect", str(out), "--json"], capsys)
    assert code == 0 and json.loads(text)["precision"] == "bf16", err
    code, _, err = run_cli(["build", str(work / "m.onnx"), "--precision", "bf16", "--backend",
                            "onnxruntime", "-o", str(work / "x.bf16.ort.onnx")], capsys)
    assert code == 1 and "--backend openvino" in err and len(err.strip().splitlines()) == 1


def test_an_fp32_race_compares_fp32_with_fp32(work, tmp_path):
    """--backend auto measures every CPU backend on what the precision names: an FP32 request
    never wins with an artifact whose float parts run in BF16."""
    model = tmp_path / "m.onnx"
    shutil.copy(work / "m.onnx", model)
    result = build(model, options=BuildOptions(precision="fp32", data=str(DEMO_CALIBRATION)))
    measured = result.details["measured"]
    assert measured["float_parts"] == {"onnxruntime": "fp32", "openvino": "fp32"}, measured
    assert result.float_parts == "fp32" and result.verification["vs_graph"]["relative"] <= 1e-4


def test_a_static_batch_export_builds_verified_and_runs_any_batch(tmp_path, demo_images):
    """An export with a fixed batch of 1 (a single camera's latency build: every shape
    static): the IR is built and verified on batches of several images, and a batch of 5
    runs in chunks, each image's logits those ONNX Runtime gives that image alone."""
    from tests.conftest import DEMO_CHECKPOINT
    from vitedge.export import ExportOptions, export_onnx

    model = tmp_path / "b1.onnx"
    export_onnx(DEMO_CHECKPOINT, model, ExportOptions(batch=1))
    out = tmp_path / "b1.fp32.ov.xml"
    result = build(model, out, BuildOptions(precision="fp32", backend="openvino",
                                            data=str(DEMO_CALIBRATION)))
    assert result.verification["vs_graph"]["images"] >= 8  # several images per inference
    x = demo_images[:5]
    with load_runner(out) as runner:
        assert runner.fixed_batch == 1
        got = runner.infer(x)
    expected = np.concatenate([graph_output(model, x[i:i + 1]) for i in range(len(x))])
    assert got.shape == expected.shape == (5, 10)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_bf16_float_parts_are_judged_against_their_graph_with_a_bf16_sized_bar():
    """Near-tie outputs (random weights: no input's top-1 is decided) are judged by the worst
    cosine with the graph: 0.999 where the float parts ran in FP32, 0.99 where they ran in
    BF16, whose 8-bit mantissa alone costs ViT-S's tied logits about 5e-3."""
    from vitedge.compare import agreement
    from vitedge.verification import Verification, VerificationError, check_verification

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((64, 1000)) * 0.01  # near ties: nothing decided
    noise = rng.standard_normal(ref.shape)
    cand = ref + 0.1 * np.linalg.norm(ref, axis=-1, keepdims=True) * noise / np.linalg.norm(
        noise, axis=-1, keepdims=True)  # worst cosine about 0.995
    a = agreement(ref, cand)
    assert a.decided == 0 and 0.99 < a.cosine_min < 0.999
    for parts, passes in (("bf16", True), ("fp32", False), (None, False)):
        v = Verification("openvino", "CPU", "64 inputs", False, "its graph", a, None,
                         float_parts=parts)
        if passes:
            check_verification(v)
        else:
            with pytest.raises(VerificationError, match="worst cosine") as failed:
                check_verification(v)
            # no flag lowers a cosine bar: the hint does not offer --min-agreement
            assert "--min-agreement lowers" not in failed.value.hint
            assert "give --data images of the model's own classes" in failed.value.hint


def test_a_top1_judged_failure_offers_min_agreement():
    from vitedge.compare import agreement
    from vitedge.verification import Verification, VerificationError, check_verification

    ref = np.zeros((64, 10))
    ref[np.arange(64), np.arange(64) % 10] = 10.0  # every top-1 decided
    cand = np.roll(ref, 1, axis=-1)  # every top-1 moved
    a = agreement(ref, cand)
    assert a.decided == 64 and a.decided_agreement == 0.0
    v = Verification("openvino", "CPU", "64 inputs", False, "its graph", a, None)
    with pytest.raises(VerificationError, match="top-1 agreement 0.0%") as failed:
        check_verification(v)
    assert "--min-agreement lowers the bar" in failed.value.hint
