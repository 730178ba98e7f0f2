"""Token reuse (Eventful Transformers with a fixed k per gate): the streaming graph of the
demo checkpoint, exported to ONNX with its state as inputs and outputs, run by ONNX
Runtime. With k = every token it is the plain exported graph (1e-5) frame after frame,
state carried; with fewer tokens ONNX Runtime gives what the PyTorch module gives, and
`TokenReuse` runs full passes where it must. Frames: OpenCV's vtest.avi where installed,
else the shipped Fashion-MNIST test images."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import vitedge
from tests.conftest import DEMO_CHECKPOINT, DEMO_TEST_IMAGES
from vitedge.errors import VitedgeError

torch = pytest.importorskip("torch")
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
K = 13


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from vitedge.export.streaming import export_streaming

    d = tmp_path_factory.mktemp("tokens")
    full = export_streaming(DEMO_CHECKPOINT, d / "full.onnx")
    part = export_streaming(DEMO_CHECKPOINT, d / "k13.onnx", K)
    assert part.full == d / "k13.full.onnx" and full.full == full.output
    return full, part


@pytest.fixture(scope="module")
def inputs(demo_fp32):
    """Ten consecutive frames, prepared for the demo model (1, 1, 28, 28) each."""
    if VTEST.is_file():
        from vitedge.runtime.sources import open_source

        frames = list(itertools.islice(open_source(VTEST), 10))
    else:
        frames = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:10]
    with vitedge.open(demo_fp32) as pipe:
        return [pipe.prepare([f]) for f in frames]


def run_sequence(session, xs, first=None):
    """The main output for each frame, the state carried; the first frame through `first`
    (the full pass that starts a stream) where given."""
    names = [i.name for i in session.get_inputs()]
    state = [np.zeros(i.shape, np.float32) for i in session.get_inputs()[1:]]
    outs = []
    for i, x in enumerate(xs):
        out = (first if i == 0 and first is not None else session).run(
            None, dict(zip(names, [x, *state], strict=True)))
        outs.append(out[0])
        state = out[1:]
    return outs


def test_all_tokens_is_the_plain_graph_frame_after_frame(graphs, inputs, demo_fp32):
    import onnxruntime as ort

    full, _ = graphs
    plain = ort.InferenceSession(str(demo_fp32))
    stream = ort.InferenceSession(str(full.output))
    for got, x in zip(run_sequence(stream, inputs), inputs, strict=True):
        want = plain.run(None, {plain.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for i in stream.get_inputs() + stream.get_outputs():  # static shapes throughout
        assert all(isinstance(d, int) for d in i.shape), (i.name, i.shape)
    assert full.k == full.tokens == 50


def test_fewer_tokens_runs_in_onnx_runtime_as_in_pytorch(graphs, inputs):
    import onnxruntime as ort

    from vitedge.model.eventful import StreamingViT
    from vitedge.model.importer import load_checkpoint

    full, part = graphs
    got = run_sequence(ort.InferenceSession(str(part.output)), inputs,
                       first=ort.InferenceSession(str(full.output)))
    vit = load_checkpoint(DEMO_CHECKPOINT).model.eval()
    module, start = StreamingViT(vit, K), StreamingViT(vit, 50)
    state = module.initial_state(1)
    with torch.no_grad():
        for i, (x, g) in enumerate(zip(inputs, got, strict=True)):
            out = (start if i == 0 else module)(torch.from_numpy(x), *state)
            state = list(out[1:])
            np.testing.assert_allclose(g, out[0].numpy(), rtol=1e-4, atol=1e-4)


def test_token_reuse_runtime_refreshes_and_keeps_cameras_apart(graphs, inputs, demo_fp32):
    import onnxruntime as ort

    from vitedge.runtime.tokens import TokenReuse

    full, part = graphs
    plain = ort.InferenceSession(str(demo_fp32))
    runner = TokenReuse(part.output, full.output, refresh=4)
    shares = []
    for i, x in enumerate(inputs):
        logits, share = runner.run(x, "door")
        shares.append(share)
        if share == 1.0:
            want = plain.run(None, {plain.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)
        runner.run(inputs[-1 - i], "yard")  # another camera's frames in between
    assert shares == [1.0, K / 50, K / 50, K / 50] * 2 + [1.0, K / 50]
    assert runner.full_passes == 3 + 3 and runner.frames == 20
    opened, paired = TokenReuse.open(part.output, refresh=4), TokenReuse(part.output, full.output,
                                                                        refresh=4)
    for x in inputs[:6]:  # the full pass its manifest names, found beside it
        a, b = opened.run(x, "door"), paired.run(x, "door")
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
    assert opened.full_passes == 2
    with pytest.raises(VitedgeError, match="not a streaming graph"):
        TokenReuse(demo_fp32, full.output)
    with pytest.raises(VitedgeError, match="not the full pass"):
        TokenReuse(part.output, part.output)


def test_a_streaming_graph_without_its_full_pass_says_so(graphs, tmp_path):
    import shutil

    from vitedge.runtime.tokens import TokenReuse

    _, part = graphs
    alone = tmp_path / "k13.onnx"
    shutil.copy(part.output, alone)
    with pytest.raises(VitedgeError, match=r"full pass of .* is missing \(k13.full.onnx\)"):
        TokenReuse.open(alone)


def test_tensorrt_parser_accepts_the_streaming_graph(graphs):
    """TensorRT for RTX's real ONNX parser and vitedge's operator table both accept it."""
    import onnx

    pytest.importorskip("tensorrt_rtx")
    from vitedge.backends.tensorrt_rtx.parser import parser_problems
    from vitedge.export.tensorrt_ops import tensorrt_problems

    for made in graphs:
        model = onnx.load(str(made.output))
        assert parser_problems(model) == []
        assert tensorrt_problems(model) == []
        gates = {"TopK", "ScatterElements", "GatherElements"} & {n.op_type for n in model.graph.node}
        # the streaming graph gates; the full pass computes every token without them
        assert gates == (set() if made.k == made.tokens else {"TopK", "ScatterElements",
                                                              "GatherElements"})


def test_adopt_borrows_a_loaded_streaming_runner_and_leaves_it_open(graphs, inputs):
    """A pipeline's own runner serves as the streaming graph (no second copy loaded): the
    same answers as `TokenReuse.open`, and closing the reuse leaves the borrowed runner
    open for its owner."""
    from vitedge.backends import load_runner
    from vitedge.runtime.tokens import TokenReuse

    _, part = graphs
    with load_runner(part.output) as runner, TokenReuse.open(part.output, refresh=4) as opened:
        borrowed = TokenReuse.adopt(runner, refresh=4)
        for x in inputs[:5]:
            a, b = borrowed.run(x, "door"), opened.run(x, "door")
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1]
        borrowed.close()
        assert borrowed.full.closed and not runner.closed
        runner.infer_named({i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                             np.float32) for i in runner.inputs})
