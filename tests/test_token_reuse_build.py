"""Token reuse on the backends: `vitedge export --token-reuse K` and its refusals, the
streaming graph and its full pass built side by side (`vitedge build`) and run through
`vitedge.backends` (`Runner.infer_named`). OpenVINO's run is judged against ONNX Runtime on
the ONNX graphs (the plain export at k = every token), within a bound taken from what
OpenVINO reports it computes; TensorRT for RTX's engines are built (no GPU runs them here).
Frames: OpenCV's vtest.avi where installed, else the shipped Fashion-MNIST test images."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import vitedge
from tests.conftest import DEMO_CHECKPOINT, DEMO_TEST_IMAGES, FIXTURES, run_cli, streaming_pair
from vitedge.errors import VitedgeError
from vitedge.options import BuildOptions

pytest.importorskip("torch")
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
K = 13
TOKENS = 50
RELATIVE = {"fp32": 1e-4}
"""The largest difference to ONNX Runtime's FP32, relative to its largest value, for what
OpenVINO reports its float parts run in (an FP32 build: FP32, vitedge export's tolerance)."""


@pytest.fixture(scope="module")
def work(tmp_path_factory, demo_streaming):
    """The demo checkpoint's streaming graph (k = 13) and its full pass beside it (k = every
    token, `cam.full.onnx`), exported by the library the CLI calls."""
    d = tmp_path_factory.mktemp("stream")
    streaming_pair(demo_streaming, d)
    return d


@pytest.fixture(scope="module")
def built(work):
    """The pair built for ONNX Runtime and OpenVINO (FP32, verified at build): `cam.fp32.*`
    and its full pass `cam.fp32.full.*`; and the full pass's graph alone for ONNX Runtime."""
    from vitedge.deploy import build

    made = {}
    for backend, suffix, name in (("onnxruntime", ".ort.onnx", "cam"),
                                  ("openvino", ".ov.xml", "cam"),
                                  ("onnxruntime", ".ort.onnx", "cam.full")):
        out = work / f"{name}.fp32{suffix}"
        result = build(work / f"{name}.onnx", out, BuildOptions(backend=backend))
        assert result.artifact == out and out.is_file()
        made[backend, name] = result
    return made


@pytest.fixture(scope="module")
def frames(demo_fp32):
    """Ten consecutive frames, prepared for the demo model (1, 1, 28, 28) each."""
    if VTEST.is_file():
        from vitedge.runtime.sources import open_source

        images = list(itertools.islice(open_source(VTEST), 10))
    else:
        images = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:10]
    with vitedge.open(demo_fp32) as pipe:
        return [pipe.prepare([f]) for f in images]


def zero_state(session):
    return [np.zeros(i.shape, np.float32) for i in session.get_inputs()[1:]]


def test_export_cli_writes_the_pair_verified(tmp_path, capsys):
    from vitedge.manifest import manifest_from_file

    out = tmp_path / "door.stream.onnx"
    code, stdout, err = run_cli(["export", str(DEMO_CHECKPOINT), "--token-reuse", str(K),
                                 "-o", str(out), "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["verified"] and {c["case"] for c in result["comparisons"]} == {
        "random, streamed", "photos, streamed"}
    assert all(c["relative"] <= result["tolerance_relative"] for c in result["comparisons"])
    full = tmp_path / "door.stream.full.onnx"
    assert result["manifest"]["source"]["token_reuse"] == {"k": K, "tokens": TOKENS,
                                                          "full": full.name}
    assert manifest_from_file(full).source["token_reuse"] == {"k": TOKENS, "tokens": TOKENS}
    assert result["size_bytes"] == out.stat().st_size + full.stat().st_size


@pytest.mark.parametrize("args, says", [
    (["--token-reuse", "0"], "use a positive token count"),
    (["--token-reuse", "51"], "tokens per gate must be 1 to 50 (the model's tokens), not 51"),
    (["--token-reuse", "8", "--merge", "4"], "--token-reuse does not combine with --merge"),
    (["--token-reuse", "8", "--input", "frames", "--batch", "4"],
     "--token-reuse does not combine with --input frames, --batch 4"),
])
def test_export_cli_refusals_are_one_line(tmp_path, args, says, capsys):
    out = tmp_path / "x.onnx"
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), *args, "-o", str(out)], capsys)
    assert code != 0 and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("fixture, has, args", [
    ("dinov2_reg4", "register tokens", []),
    ("eva02_small", "rotary position embedding", []),
    ("deit_tiny_distilled.pth", "a distillation token", ["--arch",
                                                         "deit_tiny_distilled_patch16_224"])])
def test_export_cli_refuses_families_the_streaming_module_does_not_define(tmp_path, fixture, has,
                                                                          args, capsys):
    code, _, err = run_cli(["export", str(FIXTURES / fixture), *args, "--token-reuse", "8",
                            "-o", str(tmp_path / "x.onnx")], capsys)
    assert code == 1 and "token reuse supports the classic ViT" in err and has in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()


def test_openvino_every_token_is_the_plain_graph_frame_after_frame(work, built, frames,
                                                                   demo_fp32):
    import onnxruntime as ort

    from vitedge.backends import load_runner

    plain = ort.InferenceSession(str(demo_fp32))
    with load_runner(work / "cam.fp32.full.ov.xml") as runner:  # built beside cam.fp32.ov.xml
        assert runner.backend == "openvino" and runner.float_parts == "fp32"
        names = [i.name for i in runner.inputs]
        state = [np.zeros(i.shape, np.float32) for i in runner.inputs[1:]]
        for x in frames:  # the state OpenVINO returned carried to its next frame
            out = runner.infer_named(dict(zip(names, [x, *state], strict=True)))
            state = [out["new_" + n] for n in names[1:]]
            want = plain.run(None, {plain.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(out["logits"], want, rtol=0, atol=1e-5)


def test_openvino_fewer_tokens_is_onnx_runtimes_streaming_graph(work, built, frames):
    """Each frame given the state ONNX Runtime carried to it: the main output and every new
    state within the bound of what OpenVINO computes in."""
    import onnxruntime as ort

    from vitedge.backends import load_runner

    full_ref = ort.InferenceSession(str(work / "cam.full.onnx"))
    stream_ref = ort.InferenceSession(str(work / "cam.onnx"))
    names = [i.name for i in stream_ref.get_inputs()]
    outputs = [o.name for o in stream_ref.get_outputs()]
    stream_ov = load_runner(built["openvino", "cam"].artifact)
    full_ov = load_runner(work / "cam.fp32.full.ov.xml")
    with stream_ov, full_ov:
        bound = RELATIVE.get(stream_ov.float_parts or "")
        assert bound is not None, f"an FP32 build computes in {stream_ov.float_parts}"
        state = zero_state(full_ref)
        for i, x in enumerate(frames):
            ref, ov = (full_ref, full_ov) if i == 0 else (stream_ref, stream_ov)
            feeds = dict(zip(names, [x, *state], strict=True))
            want = dict(zip(outputs, ref.run(None, feeds), strict=True))
            got = ov.infer_named(feeds)
            for name in outputs:
                scale = np.abs(want[name]).max()
                assert np.abs(got[name] - want[name]).max() <= bound * scale, (i, name)
            state = [want[n] for n in outputs[1:]]


def test_the_built_streaming_artifact_names_its_built_full_pass(work, built, capsys):
    from vitedge.backends import load_runner

    for backend, suffix in (("onnxruntime", ".ort.onnx"), ("openvino", ".ov.xml")):
        result = built[backend, "cam"]
        full = work / f"cam.fp32.full{suffix}"
        assert result.details["token_reuse"] == {"k": K, "tokens": TOKENS, "full": str(full)}
        with load_runner(result.artifact) as runner:
            assert runner.manifest.source["token_reuse"]["full"] == full.name
            assert runner.manifest.source["backend"] == backend
        with load_runner(full) as runner:
            assert runner.manifest.source["token_reuse"] == {"k": TOKENS, "tokens": TOKENS}
        v = result.verification
        assert v["graph"] == "streaming graph" and v["full_pass"]["graph"] == "full pass"
        assert v["worst_relative"] <= v["tolerance_relative"] == RELATIVE["fp32"]
        code, out, err = run_cli(["inspect", str(result.artifact)], capsys)
        assert code == 0, err
        assert f"streaming graph: {v['frames']} frames" in out  # the build's own words
    alone = built["onnxruntime", "cam.full"]  # every token: its own full pass, one artifact
    assert alone.details["token_reuse"]["full"] == str(alone.artifact)
    assert alone.verification["graph"] == "streaming graph (every token)"
    assert alone.verification["frames"] > 4 and "full_pass" not in alone.verification


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_token_reuse_over_built_artifacts_gives_what_it_gave_over_the_onnx(work, built, frames,
                                                                           backend):
    from vitedge.runtime.tokens import TokenReuse

    with TokenReuse.open(work / "cam.onnx", refresh=4) as onnx_pair, \
            TokenReuse.open(built[backend, "cam"].artifact, refresh=4) as artifacts:
        assert artifacts.stream.backend == artifacts.full.backend == backend
        bound = 1e-5 if artifacts.stream.float_parts == "fp32" else None
        assert bound is not None
        for i, x in enumerate(frames):
            for camera, frame in (("door", x), ("yard", frames[-1 - i])):
                want, share = onnx_pair.run(frame, camera)
                got, got_share = artifacts.run(frame, camera)
                assert got_share == share
                np.testing.assert_allclose(got, want, rtol=0, atol=bound)
        assert artifacts.full_passes == onnx_pair.full_passes == 6
        assert artifacts.frames == 20


def test_infer_named_says_which_inputs_it_takes(built):
    from vitedge.backends import load_runner

    with load_runner(built["onnxruntime", "cam.full"].artifact) as runner, pytest.raises(
            VitedgeError, match=r"takes the inputs images, state.0.ref_qkv.*missing state"):
        runner.infer_named({"images": np.zeros((1, 1, 28, 28), np.float32)})


@pytest.mark.parametrize("args, says", [
    (["--precision", "int8"], "INT8 for a streaming graph needs frames to measure its states"),
    (["--precision", "fp16"], "builds in FP32 or INT8 only, not fp16"),
    (["--batch", "1:4:8"], "a streaming graph's batch is fixed at 1 (one state per camera)")])
def test_build_refuses_what_a_streaming_graph_does_not_build(work, args, says, capsys):
    code, _, err = run_cli(["build", str(work / "cam.onnx"), *args, "--backend", "openvino",
                            "-o", str(work / "refused.ov.xml")], capsys)
    assert code == 1 and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (work / "refused.ov.xml").exists()
    assert "--precision fp32" in err or "--data" in err or "--batch" in args


def test_tensorrt_rtx_builds_engines_for_both_graphs(work, capsys):
    """TensorRT for RTX's real builder, no GPU: both engines, the streaming one's description
    naming the full pass's engine; not verified here (nothing runs them)."""
    pytest.importorskip("tensorrt_rtx")
    from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path

    engine = work / "cam.fp32.engine"
    code, out, err = run_cli(["build", str(work / "cam.onnx"), "--backend", "tensorrt-rtx",
                              "-o", str(engine), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    full = work / "cam.fp32.full.engine"
    assert result["details"]["token_reuse"]["full"] == str(full)
    for path, k in ((engine, K), (full, TOKENS)):
        info = EngineInfo.read(sidecar_path(path))
        assert info.backend == "tensorrt-rtx" and info.batch == "1:1:1"
        assert info.manifest["source"]["token_reuse"]["k"] == k
        assert [i["name"] for i in info.inputs][:2] == ["images", "state.0.ref_qkv"]
        assert len(info.inputs) == 1 + 6 * 6 and len(info.outputs) == 1 + 6 * 6
        assert 100_000 < path.stat().st_size < 50_000_000
    assert EngineInfo.read(sidecar_path(engine)).manifest["source"]["token_reuse"]["full"] == \
        full.name
    assert result["verification"]["skipped"].startswith("not verified")


def test_a_rebuild_replaces_its_pair_but_not_a_file_in_the_full_passs_place(work, built, capsys):
    from vitedge.deploy import build

    out = built["onnxruntime", "cam"].artifact
    again = build(work / "cam.onnx", out, BuildOptions(backend="onnxruntime"))
    assert again.artifact == out  # the same target: replaced, pair and all
    mine = work / "mine.fp32.full.ort.onnx"
    mine.write_text("a file of the user's")
    code, _, err = run_cli(["build", str(work / "cam.onnx"), "--backend", "onnxruntime", "-o",
                            str(work / "mine.fp32.ort.onnx")], capsys)
    assert code == 1 and "mine.fp32.full.ort.onnx, where the full pass" in err
    assert mine.read_text() == "a file of the user's"
    assert not (work / "mine.fp32.ort.onnx").exists()


def test_a_pair_that_fails_verification_writes_nothing(work, monkeypatch, capsys):
    """The check is wired: with a tolerance nothing meets, the build stops in one line and
    neither artifact appears."""
    import vitedge.streaming_build as streaming_build

    monkeypatch.setattr(streaming_build, "FP32_TOLERANCE", -1.0)
    out = work / "strict.fp32.ort.onnx"
    code, _, err = run_cli(["build", str(work / "cam.onnx"), "--backend", "onnxruntime", "-o",
                            str(out)], capsys)
    assert code == 1 and "the built full pass differs from its ONNX graph" in err
    assert not out.exists() and not (work / "strict.fp32.full.ort.onnx").exists()


MEGAMIND = VTEST.with_name("Megamind.avi")


@pytest.mark.skipif(not MEGAMIND.is_file(), reason="apt-get install opencv-doc for Megamind.avi")
def test_export_token_reuse_auto_chooses_the_fewest_tokens_within_the_budget(demo_fp32, tmp_path,
                                                                            capsys):
    """`--token-reuse auto` on a moving-camera clip: the recorded score of each K is what the
    exported pair computes in ONNX Runtime through TokenReuse against the plain exported
    graph on the same frames, the chosen K is within --max-drop and every smaller one is
    not."""
    import onnxruntime as ort

    from vitedge.manifest import manifest_from_file
    from vitedge.runtime.sources import open_source
    from vitedge.runtime.tokens import TokenReuse

    out = tmp_path / "mm.onnx"
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(out), "--token-reuse",
                            "auto", "--token-data", str(MEGAMIND), "--max-drop", "1"], capsys)
    assert code == 0, err
    entry = manifest_from_file(out).source["token_reuse"]
    chosen, scores = entry["k"], {c["k"]: c["score"] for c in entry["auto"]["candidates"]}
    assert entry["auto"]["frames"] == 120 and len(scores) >= 3
    with vitedge.open(demo_fp32) as pipe:
        frames = [pipe.prepare([f]) for f in itertools.islice(open_source(MEGAMIND), 120)]
    plain = ort.InferenceSession(str(demo_fp32))
    want = [plain.run(None, {"images": x})[0].argmax() for x in frames]
    for k in (chosen, max(c for c in scores if c < chosen) if min(scores) < chosen else None):
        if k is None:
            continue
        part = tmp_path / f"k{k}.onnx"
        code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(part),
                                "--token-reuse", str(k), "--no-verify"], capsys)
        assert code == 0, err
        with TokenReuse.open(part, refresh=30) as reuse:
            got = [reuse.run(x, "cam")[0].argmax() for x in frames]
        agreement = 100 * np.mean(np.array(got) == np.array(want))
        assert agreement == pytest.approx(scores[k], abs=1e-3)  # recorded to 4 decimals
        assert (agreement >= 99.0) == (k == chosen)
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(tmp_path / "x.onnx"),
                            "--token-reuse", "auto"], capsys)
    assert code != 0 and "--token-data" in err and "Traceback" not in err
