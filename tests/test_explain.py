"""`vitedge explain` and the position-embedding figure: attention read from the exported
graph (and from the fused `vitedge build` artifact) equals Hugging Face's own
`output_attentions`; the maps follow their formulas on hand-built examples; the quantized
demo model still looks where the FP32 one does; figures and grids are written as promised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, DEMO_TEST_IMAGES, run_cli
from vitedge.architecture import ViTConfig
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.deploy import BuildOptions, build
from vitedge.errors import VitedgeError
from vitedge.explain import ExplainOptions, explain_images, position_embeddings
from vitedge.explain.figures import PANEL, POS_EMBED_SIZE
from vitedge.export import ExportOptions, export_onnx
from vitedge.quantize.quantizer import QuantizeRequest, quantize_model
from vitedge.runtime.attention import (
    attention_grid,
    attention_rollout,
    cls_attention,
    grid_similarity,
    position_similarity,
)
from vitedge.runtime.pipeline import open_pipeline

IMAGES = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:3]


# --- against Hugging Face -----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A random Hugging Face ViT (48x48, patch 8: a 6x6 grid), its weights perturbed so that
    attention is far from uniform, saved; and its attentions on two inputs."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                                    intermediate_size=96, image_size=48, patch_size=8,
                                    num_labels=5, attn_implementation="eager")
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    folder = tmp_path_factory.mktemp("hf") / "vit"
    model.save_pretrained(folder)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x), output_attentions=True)
    return folder, x, [a.numpy() for a in out.attentions]


def test_attention_of_the_exported_graph_equals_hugging_face(hf_vit, tmp_path):
    folder, x, reference = hf_vit
    onnx_path = tmp_path / "vit.onnx"
    export_onnx(folder, onnx_path, ExportOptions())
    logits, probs = OnnxRuntimeRunner(onnx_path).attention(x)
    assert logits.shape == (2, 5) and len(probs) == len(reference) == 3
    for ours, theirs in zip(probs, reference, strict=True):
        assert ours.shape == theirs.shape == (2, 3, 37, 37)
        assert theirs.max() > 10 / 37  # far from uniform: the comparison can fail
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_attention_of_the_fused_onnxruntime_artifact_equals_hugging_face(hf_vit, tmp_path):
    folder, x, reference = hf_vit
    result = build(folder, str(tmp_path / "vit.ort.onnx"), BuildOptions(precision="fp32"))
    assert result.details["onnxruntime"]["attention_fused"] == 3  # no softmax left to read
    _, probs = OnnxRuntimeRunner(result.artifact).attention(x)
    for ours, theirs in zip(probs, reference, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


# --- the formulas on hand-built examples --------------------------------------------------

def tiny_config(**changes) -> ViTConfig:
    """One row of two patches (4x8 image, patch 4), one head."""
    fields = dict(img_size=(4, 8), patch_size=4, embed_dim=4, depth=2, num_heads=1,
                  mlp_hidden=8, num_classes=2)
    return ViTConfig(**{**fields, **changes})


def test_rollout_on_a_two_layer_example_equals_the_formula():
    a1 = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    probs = [a[None, None] for a in (a1, a2)]
    # (A + I) row-normalised: a1 -> [[.75, .25, 0], I rows]; a2 -> [[.5, 0, .5], [0, 1, 0],
    # [.25, 0, .75]]; class row of a2' @ a1' = .5 * [.75, .25, 0] + .5 * [0, 0, 1]
    np.testing.assert_allclose(attention_rollout(probs, tiny_config()), [[[0.125, 0.5]]])
    # the class token's own row in the last layer, patches only
    np.testing.assert_allclose(cls_attention(probs, tiny_config()), [[[0.0, 1.0]]])
    np.testing.assert_allclose(cls_attention(probs, tiny_config(), layer=0), [[[0.5, 0.0]]])


def test_rollout_of_a_mean_pooled_model_follows_the_mean_of_the_patch_rows():
    cfg = tiny_config(class_token=False, global_pool="avg")
    a1 = np.array([[1.0, 0.0], [0.5, 0.5]])  # -> [[1, 0], [.25, .75]]
    a2 = np.array([[0.0, 1.0], [0.0, 1.0]])  # -> [[.5, .5], [0, 1]]
    probs = [a[None, None] for a in (a1, a2)]
    # a2' @ a1' = [[.625, .375], [.25, .75]]; mean of the rows
    np.testing.assert_allclose(attention_rollout(probs, cfg), [[[0.4375, 0.5625]]])
    with pytest.raises(VitedgeError, match="no class token.*rollout"):
        cls_attention(probs, cfg)


def test_heads_reduce_as_asked():
    heads = np.array([[[1.0, 0.0, 0.0]] * 3, [[0.0, 0.5, 0.5]] * 3])[None]  # (1, 2, 3, 3)
    cfg = tiny_config(num_heads=2)
    np.testing.assert_allclose(cls_attention([heads], cfg, head="mean"), [[[0.25, 0.25]]])
    np.testing.assert_allclose(cls_attention([heads], cfg, head="max"), [[[0.5, 0.5]]])
    np.testing.assert_allclose(cls_attention([heads], cfg, head=0), [[[0.0, 0.0]]])
    with pytest.raises(VitedgeError, match="2 heads"):
        cls_attention([heads], cfg, head=2)
    with pytest.raises(VitedgeError, match="layer 3 does not exist"):
        attention_grid([heads], cfg, "cls", layer=3)


# --- the demo model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_int8(demo_fp32, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "fmnist.int8.onnx"
    quantize_model(demo_fp32, out, QuantizeRequest("int8", data=str(DEMO_CALIBRATION)))
    return out


def test_grid_follows_image_and_patch_size(demo_fp32, hf_vit, tmp_path):
    with open_pipeline(demo_fp32) as pipe:  # 28x28, patch 4
        assert pipe.explain(IMAGES[0]).shape == (7, 7)
    bigger = tmp_path / "fmnist56.onnx"
    export_onnx(DEMO_CHECKPOINT, bigger, ExportOptions(img_size=56, verify=False))
    with open_pipeline(bigger) as pipe:
        assert pipe.explain(IMAGES[0], method="rollout").shape == (14, 14)
    hf = tmp_path / "hf.onnx"
    export_onnx(hf_vit[0], hf, ExportOptions(verify=False))  # 48x48, patch 8
    with open_pipeline(hf) as pipe:
        assert pipe.explain(np.zeros((100, 60, 3), np.uint8)).shape == (6, 6)


def test_pipeline_explain_is_the_class_rows_of_the_graphs_attention(demo_fp32):
    frame = np.asarray(Image.open(IMAGES[1]))
    with open_pipeline(demo_fp32) as pipe:
        e = pipe.explanation(frame, layer=2, head=1)
        x = pipe.prepare([frame])
        _, probs = pipe.model.attention(x)
    np.testing.assert_allclose(e.grid, probs[2][0, 1, 0, 1:].reshape(7, 7), rtol=1e-6)
    assert e.pixels.shape == (28, 28, 1) and e.prediction.label is not None


def test_int8_looks_where_fp32_looks(demo_fp32, demo_int8, tmp_path):
    built = build(demo_int8, str(tmp_path / "m.int8.ort.onnx"), BuildOptions()).artifact
    similarities = {"cls": [], "rollout": []}
    with open_pipeline(demo_fp32) as fp32, open_pipeline(demo_int8) as int8, \
            open_pipeline(built) as fused:
        for image in sorted(DEMO_TEST_IMAGES.rglob("*.png"))[::100]:
            for method, values in similarities.items():
                reference = fp32.explain(image, method)
                values.append(grid_similarity(reference, int8.explain(image, method)))
                # the fused artifact's attention is read another way; same model, same map
                assert grid_similarity(int8.explain(image, method), fused.explain(image, method)) > 0.99
    assert min(similarities["rollout"]) > 0.95 and np.mean(similarities["cls"]) > 0.95


def test_explain_writes_figures_and_grids(demo_fp32, demo_int8, tmp_path):
    results = explain_images(demo_int8, IMAGES[:2], tmp_path,
                             ExplainOptions(method="rollout", compare=demo_fp32))
    assert len(results) == 2
    for r in results:
        with Image.open(r.png) as png:
            assert png.size == (3 * PANEL[0], PANEL[1])  # image, INT8 map, FP32 map
        grid = np.load(r.npy)
        assert grid.shape == r.grid_shape == (7, 7)
        assert grid.min() >= 0 and grid.sum() < 1  # a row of a product of stochastic matrices
        assert r.compare["similarity"] == pytest.approx(
            grid_similarity(grid, np.load(r.compare["npy"])))
    single = explain_images(demo_fp32, IMAGES[:1], tmp_path / "one", ExplainOptions())
    with Image.open(single[0].png) as png:
        assert png.size == (2 * PANEL[0], PANEL[1])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        f"{IMAGES[0].stem}.cls.npy", f"{IMAGES[0].stem}.cls.png"]
    twice = explain_images(demo_fp32, [IMAGES[0], IMAGES[0]], tmp_path / "two", ExplainOptions())
    assert [Path(r.png).name for r in twice] == [f"{IMAGES[0].stem}.cls.png",
                                                 f"{IMAGES[0].stem}-2.cls.png"]


def test_cli_explain(demo_fp32, tmp_path, capsys):
    code, out, _ = run_cli(["explain", str(demo_fp32), str(IMAGES[0]), "-o", str(tmp_path),
                            "--head", "max", "--layer", "0", "--json"], capsys)
    assert code == 0
    (result,) = json.loads(out)["explanations"]
    assert result["grid_shape"] == [7, 7] and result["prediction"]["label"]
    with open_pipeline(demo_fp32) as pipe:
        np.testing.assert_allclose(np.load(result["npy"]), pipe.explain(IMAGES[0], "cls", 0, "max"))


@pytest.mark.parametrize("args, expected", [
    (["--head", "9"], "head 9 does not exist: this model has 4 heads"),
    (["--head", "some"], "--head 'some' is not mean, max or a head number"),
    (["--layer", "6"], "layer 6 does not exist: this model has 6 blocks"),
])
def test_cli_explain_bad_input(demo_fp32, tmp_path, capsys, args, expected):
    code, _, err = run_cli(["explain", str(demo_fp32), str(IMAGES[0]), "-o", str(tmp_path), *args],
                           capsys)
    assert code == 1 and expected in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


def test_cli_explain_refuses_what_it_cannot_compare_or_read(demo_fp32, tmp_path, capsys):
    bigger = tmp_path / "fmnist56.onnx"
    export_onnx(DEMO_CHECKPOINT, bigger, ExportOptions(img_size=56, verify=False))
    out = tmp_path / "out"
    code, _, err = run_cli(["explain", str(demo_fp32), str(IMAGES[0]), "-o", str(out),
                            "--compare", str(bigger)], capsys)
    assert code == 1 and "do not attend over the same tokens (7x7 patches + 1 against 14x14" in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code, _, err = run_cli(["explain", str(demo_fp32), str(broken), "-o", str(out)], capsys)
    assert code == 1 and "cannot read image" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, not even the folder


def test_explain_needs_a_class_token_for_cls(tmp_path):
    from tests.conftest import FIXTURES

    model = tmp_path / "gap.onnx"
    export_onnx(FIXTURES / "vit_reg4_gap", model, ExportOptions(verify=False))
    frame = np.zeros((64, 64, 3), np.uint8)
    with open_pipeline(model) as pipe:
        with pytest.raises(VitedgeError, match="no class token"):
            pipe.explain(frame)
        grid = pipe.explain(frame, method="rollout")
    assert grid.shape == tuple(pipe.manifest.architecture.grid)


# --- position embeddings --------------------------------------------------------------------

def test_position_embedding_similarity_from_the_artifact_matches_the_checkpoint(demo_int8):
    from safetensors.numpy import load_file

    pos = load_file(DEMO_CHECKPOINT)["pos_embed"][0, 1:]  # the patch positions, class row off
    unit = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    expected = (unit @ unit.T).reshape(7, 7, 7, 7)
    read, grid = position_embeddings(demo_int8)
    assert grid == (7, 7)
    similarity = position_similarity(read, grid)
    np.testing.assert_allclose(similarity, expected, atol=1e-5)
    assert similarity[3, 4, 3, 4] == pytest.approx(1.0)


def test_cli_inspect_pos_embed(demo_fp32, tmp_path, capsys):
    figure = tmp_path / "pos.png"
    code, out, _ = run_cli(["inspect", str(demo_fp32), "--pos-embed", str(figure)], capsys)
    assert code == 0 and "7x7 positions" in out
    with Image.open(figure) as png:
        assert png.size == POS_EMBED_SIZE
    from tests.test_engine_info import ORIN
    from vitedge.backends.tensorrt.engine_info import sidecar_path

    engine = tmp_path / "m.plan"  # an engine, known by its description, whatever its name
    engine.write_bytes(b"plan")
    sidecar_path(engine).write_text(ORIN.to_json())
    code, _, err = run_cli(["inspect", str(engine), "--pos-embed", str(figure)], capsys)
    assert code == 1 and "ONNX model" in err
