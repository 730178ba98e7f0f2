"""The ViTs people deploy now, against their own implementations: Hugging Face's DINOv2,
CLIP and SigLIP built live here (random init, perturbed, depth-reduced; both the names
`save_pretrained` writes and transformers-5's module names), timm's DINOv2 / CLIP / SigLIP /
EVA-02 through committed fixtures (tests/test_reference_fixtures.py), embeddings through
the runtime, zero-shot heads against CLIPModel / SiglipModel, and INT8 / FP16 through every
family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import DEMO_CALIBRATION, FIXTURES, ROOT, relative_error, run_cli

transformers = pytest.importorskip("transformers")

from vitedge.export import ExportOptions, export_onnx  # noqa: E402

PHOTOS = sorted((ROOT / "vitedge" / "data" / "photos").glob("*.jpg"))
SMALL = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3}
TOL = 1e-4


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random init moved off its defaults (zero biases, unit norms, small layer scales), so
    that every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def dinov2(**extra):
    return transformers.Dinov2Config(**SMALL, mlp_ratio=2, image_size=56, patch_size=14, **extra)


def tower(kind: str, **extra):
    cls = transformers.CLIPVisionConfig if kind == "clip" else transformers.SiglipVisionConfig
    return cls(**SMALL, intermediate_size=96, image_size=32, patch_size=8, **extra)


HF_CASES = {
    # name: (model factory, its output, image size)
    "Dinov2Model": (lambda: transformers.Dinov2Model(dinov2()), "pooler_output", 56),
    "Dinov2ForImageClassification": (
        lambda: transformers.Dinov2ForImageClassification(dinov2(num_labels=5)), "logits", 56),
    "Dinov2Model swiglu": (lambda: transformers.Dinov2Model(dinov2(use_swiglu_ffn=True)),
                           "pooler_output", 56),
    "Dinov2WithRegistersForImageClassification": (
        lambda: transformers.Dinov2WithRegistersForImageClassification(
            transformers.Dinov2WithRegistersConfig(**SMALL, mlp_ratio=2, image_size=56,
                                                   patch_size=14, num_labels=4)), "logits", 56),
    "CLIPVisionModel": (lambda: transformers.CLIPVisionModel(tower("clip")), "pooler_output", 32),
    "CLIPVisionModelWithProjection gelu": (
        lambda: transformers.CLIPVisionModelWithProjection(
            tower("clip", projection_dim=24, hidden_act="gelu")), "image_embeds", 32),
    "SiglipVisionModel": (lambda: transformers.SiglipVisionModel(tower("siglip")),
                          "pooler_output", 32),
}


def hf_folder(model: torch.nn.Module, folder: Path, v5_names: bool = False) -> Path:
    """`save_pretrained` (the hub's names), or transformers-5's own module names as
    `torch.save(model.state_dict())` writes them."""
    model.save_pretrained(folder)
    if v5_names:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def hf_output(model: torch.nn.Module, output: str, x: torch.Tensor, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return getattr(model(pixel_values=x, **kwargs), output).numpy()


def onnx_output(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize("name", list(HF_CASES))
@pytest.mark.parametrize("names", ["hub", "transformers-5"])
def test_hugging_face_families_export_at_their_size_and_another(name, names, tmp_path):
    factory, output, size = HF_CASES[name]
    torch.manual_seed(0)
    model = perturbed(factory())
    folder = hf_folder(model, tmp_path / "ckpt", v5_names=names == "transformers-5")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    export_onnx(folder, tmp_path / "m.onnx", ExportOptions())
    assert relative_error(hf_output(model, output, x), onnx_output(tmp_path / "m.onnx", x.numpy())) <= TOL
    # another size: position embeddings resampled the way each library interpolates them
    other = size + (14 if "Dinov2" in name else 16)
    x2 = torch.randn(2, 3, other, other, generator=torch.Generator().manual_seed(2))
    interpolate = {} if "Dinov2" in name else {"interpolate_pos_encoding": True}
    export_onnx(folder, tmp_path / "m2.onnx", ExportOptions(img_size=other))
    assert relative_error(hf_output(model, output, x2, **interpolate),
                          onnx_output(tmp_path / "m2.onnx", x2.numpy())) <= TOL


def test_the_image_tower_of_a_full_clip_or_siglip_checkpoint_exports(tmp_path):
    for kind, model in (("clip", clip_model()), ("siglip", siglip_model())):
        folder = hf_folder(model, tmp_path / kind)
        x = torch.randn(2, 3, 32, 32)
        result = export_onnx(folder, tmp_path / f"{kind}.onnx", ExportOptions())
        with torch.no_grad():
            ref = model.get_image_features(pixel_values=x)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
        assert relative_error(ref.numpy(), onnx_output(tmp_path / f"{kind}.onnx", x.numpy())) <= TOL
        assert result.manifest.output_name == "features" and not result.manifest.labels


# --- zero-shot heads ----------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "photo", "of", "an", "the", "cat", "rocket",
         "cup", "astronaut", "sketch", "."]
CLASSES = ["cat", "rocket", "cup", "astronaut"]


def tokenizer_files(folder: Path) -> None:
    """A word-level tokenizer for the prompts (the hub's are not reachable here), saved as
    transformers loads any tokenizer: AutoTokenizer.from_pretrained(folder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
        eos_token="[EOS]", model_max_length=16).save_pretrained(folder)


def clip_model() -> torch.nn.Module:
    torch.manual_seed(3)
    text = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "vocab_size": len(WORDS), "max_position_embeddings": 16,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    config = transformers.CLIPConfig(text_config=text, vision_config=tower("clip").to_dict(),
                                     projection_dim=24)
    return perturbed(transformers.CLIPModel(config), 3)


def siglip_model() -> torch.nn.Module:
    torch.manual_seed(4)
    text = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3,
            "intermediate_size": 96, "vocab_size": len(WORDS), "max_position_embeddings": 16}
    config = transformers.SiglipConfig(text_config=text, vision_config=tower("siglip").to_dict())
    return perturbed(transformers.SiglipModel(config), 4)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_zero_shot_head_gives_the_two_tower_models_probabilities(kind, tmp_path, capsys):
    """The exported classifier's probabilities equal CLIPModel's logits_per_image softmax /
    SiglipModel's sigmoid, on the same photos and prompts (prompts averaged per class)."""
    import vitedge

    model = clip_model() if kind == "clip" else siglip_model()
    folder = hf_folder(model, tmp_path / "ckpt")
    tokenizer_files(folder)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    prompts = ["a photo of a {} .", "a sketch of the {} ."]
    out = tmp_path / "zs.onnx"
    args = ["export", str(folder), "-o", str(out), "--zero-shot", str(tmp_path / "classes.txt"),
            *[a for p in prompts for a in ("--prompt", p)], "--json"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "Loading weights" not in err  # transformers' own bar stays quiet
    manifest = json.loads(stdout)["manifest"]
    assert manifest["labels"] == CLASSES and manifest["source"]["zero_shot"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = [p.format(c) for c in CLASSES for p in prompts]
    with vitedge.open(out, keep_logits=True, topk=len(CLASSES)) as pipe:
        x = pipe.prepare(PHOTOS)
        ours = np.stack([p.logits for p in pipe.batch(PHOTOS)])
        scores = [dict((lab, s) for _, lab, s in p.topk) for p in pipe.batch(PHOTOS)]
    with torch.no_grad():
        if kind == "clip":
            tokens = tokenizer(texts, padding=True, return_tensors="pt")
            text = model.get_text_features(input_ids=tokens["input_ids"],
                                           attention_mask=tokens["attention_mask"])
        else:
            tokens = tokenizer(texts, padding="max_length", return_tensors="pt")
            text = model.get_text_features(input_ids=tokens["input_ids"])
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        text = torch.nn.functional.normalize(text, dim=-1).reshape(len(CLASSES), len(prompts), -1)
        text = torch.nn.functional.normalize(text.mean(1), dim=-1)  # prompt ensembling
        image = model.get_image_features(pixel_values=torch.from_numpy(x))
        image = torch.nn.functional.normalize(
            image if isinstance(image, torch.Tensor) else image.pooler_output, dim=-1)
        logits = image @ text.T * model.logit_scale.exp()
        if kind == "siglip":
            logits = logits + model.logit_bias
        probs = logits.softmax(-1) if kind == "clip" else torch.sigmoid(logits)
    assert relative_error(logits.numpy(), ours) <= TOL
    ours_probs = np.array([[s[c] for c in CLASSES] for s in scores])
    np.testing.assert_allclose(ours_probs, probs.numpy(), atol=1e-4)
    # the same, with one prompt, against the models' own forward (logits_per_image)
    with torch.no_grad():
        tokens = tokenizer([f"a photo of a {c} ." for c in CLASSES],
                           padding=True if kind == "clip" else "max_length", return_tensors="pt")
        ref = model(input_ids=tokens["input_ids"], pixel_values=torch.from_numpy(x),
                    **({"attention_mask": tokens["attention_mask"]} if kind == "clip" else {}))
    one = export_onnx(folder, tmp_path / "one.onnx", ExportOptions(
        zero_shot=tmp_path / "classes.txt", prompts=("a photo of a {} .",)))
    assert one.manifest.score == ("softmax" if kind == "clip" else "sigmoid")
    assert relative_error(ref.logits_per_image.numpy(),
                          onnx_output(tmp_path / "one.onnx", x)) <= TOL


def test_a_zero_shot_head_from_given_text_embeddings_on_a_timm_tower(tmp_path):
    """timm's CLIP tower has no text tower: the embeddings come as .npy."""
    import vitedge
    from vitedge.model import load_checkpoint

    text = np.random.default_rng(0).standard_normal((3, 96)).astype(np.float32)
    np.save(tmp_path / "text.npy", text)
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    out = tmp_path / "zs.onnx"
    export_onnx(FIXTURES / "clip", out, ExportOptions(
        zero_shot=tmp_path / "classes.txt", zero_shot_embeddings=tmp_path / "text.npy"))
    features = load_checkpoint(FIXTURES / "clip").model
    with vitedge.open(out, keep_logits=True) as pipe:
        x = pipe.prepare(PHOTOS[:2])
        logits = np.stack([p.logits for p in pipe.batch(PHOTOS[:2])])
    with torch.no_grad():
        e = torch.nn.functional.normalize(features(torch.from_numpy(x)), dim=-1).numpy()
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    assert relative_error(100.0 * e @ t.T, logits) <= TOL


@pytest.mark.parametrize("args, expected", [
    (["--zero-shot", "{labels}"], "CLIP or SigLIP image tower"),  # a DINOv2 model
    (["--zero-shot-embeddings", "{npy}"], "go with --zero-shot"),
    (["--zero-shot", "{labels}", "--prompt", "no placeholder"], "must hold '{}' once"),
])
def test_zero_shot_refusals_are_one_line(args, expected, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    np.save(tmp_path / "t.npy", np.ones((2, 96), np.float32))
    filled = [a.format(labels=tmp_path / "labels.txt", npy=tmp_path / "t.npy") for a in args]
    code, _, err = run_cli(["export", str(FIXTURES / "dinov2"), "-o", str(tmp_path / "x.onnx"),
                            *filled], capsys)
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


# --- embeddings through the runtime -------------------------------------------------------

def test_pipe_embedding_equals_the_reference_model_on_the_photos(tmp_path):
    """pipe(photo).embedding is the reference model's output on the pixels the pipeline
    made, normalised on request; and the pipeline's preprocessing is CLIP's own processor's."""
    import vitedge

    torch.manual_seed(5)
    model = perturbed(transformers.CLIPVisionModelWithProjection(tower("clip", projection_dim=24)))
    folder = hf_folder(model, tmp_path / "ckpt")
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    export_onnx(folder, tmp_path / "m.onnx", ExportOptions())
    with vitedge.open(tmp_path / "m.onnx") as pipe, \
            vitedge.open(tmp_path / "m.onnx", normalize_embeddings=True) as unit:
        x = pipe.prepare(PHOTOS)
        embeddings = np.stack([p.embedding for p in pipe.batch(PHOTOS)])
        normalized = np.stack([p.embedding for p in unit.batch(PHOTOS)])
        assert all(p.label is None and p.score is None and not p.topk for p in pipe.batch(PHOTOS))
    from PIL import Image

    theirs = processor([Image.open(p).convert("RGB") for p in PHOTOS], return_tensors="np")
    np.testing.assert_allclose(x, theirs["pixel_values"], atol=1e-5)
    ref = hf_output(model, "image_embeds", torch.from_numpy(x))
    assert relative_error(ref, embeddings) <= TOL
    np.testing.assert_allclose(normalized, ref / np.linalg.norm(ref, axis=1, keepdims=True),
                               atol=1e-5)


def test_embed_writes_a_gallery_and_predict_shows_embeddings(tmp_path, capsys):
    model = tmp_path / "dinov2.onnx"
    export_onnx(FIXTURES / "dinov2", model, ExportOptions())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "gallery.npy"
    code, stdout, err = run_cli(["embed", str(model), *map(str, PHOTOS), str(broken), "-o",
                                 str(out), "--normalize", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["count"] == len(PHOTOS) and result["dim"] == 96
    assert [s["image"] for s in result["skipped"]] == [str(broken)]
    gallery = np.load(out)
    assert gallery.shape == (len(PHOTOS), 96)
    np.testing.assert_allclose(np.linalg.norm(gallery, axis=1), 1.0, atol=1e-5)
    assert (tmp_path / "gallery.paths.txt").read_text().split() == list(map(str, PHOTOS))
    code, stdout, _ = run_cli(["predict", str(model), str(PHOTOS[0]), "--embeddings", "--json"],
                              capsys)
    predicted = json.loads(stdout)
    assert code == 0 and "embedding" in predicted["outputs"]["features"]
    np.testing.assert_allclose(np.asarray(predicted["predictions"][0]["embedding"]) /
                               np.linalg.norm(predicted["predictions"][0]["embedding"]),
                               gallery[0], atol=1e-5)
    code, _, err = run_cli(["embed", str(_classifier(tmp_path)), str(PHOTOS[0]), "-o",
                            str(tmp_path / "x.npy")], capsys)
    assert code == 1 and "is a classifier" in err and not (tmp_path / "x.npy").exists()
    code, _, err = run_cli(["eval", str(model), "--data", str(DEMO_CALIBRATION)], capsys)
    assert code == 1 and "no classification head" in err


def _classifier(tmp_path: Path) -> Path:
    out = tmp_path / "classifier.onnx"
    export_onnx(FIXTURES / "dinov2_reg4", out, ExportOptions())
    return out


def test_bench_and_serve_repositories_take_a_headless_model(tmp_path, capsys):
    from vitedge.options import ServeOptions
    from vitedge.serve import export_repository

    model = tmp_path / "siglip.onnx"
    export_onnx(FIXTURES / "siglip", model, ExportOptions())
    code, stdout, err = run_cli(["bench", str(model), "--iterations", "5", "--batch", "1",
                                 "--json-file", str(tmp_path / "b.json")], capsys)
    assert code == 0, err
    entries = export_repository([model], tmp_path / "repo", ServeOptions())
    assert entries[0].outputs[0].name == "features" and entries[0].outputs[0].dims == [96]


# --- the families quantize -------------------------------------------------------------------

FAMILIES = ["dinov2", "dinov2_reg4", "clip", "clip_quickgelu", "siglip", "eva02_small",
            "eva02_base"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_quantizes_to_int8_and_fp16(family, tmp_path):
    """INT8 (calibrated on 64 images) and FP16 of every family's export keep their outputs
    close to FP32 on the bundled photos (the quantized files also go through the TensorRT
    parser check, tests/test_tensorrt_parser.py)."""
    import vitedge
    from vitedge.compare import agreement
    from vitedge.options import CalibrationOptions, QuantizeRequest
    from vitedge.quantize.quantizer import quantize_model

    fp32 = tmp_path / f"{family}.onnx"
    export_onnx(FIXTURES / family, fp32, ExportOptions())
    with vitedge.open(fp32, keep_logits=True) as pipe:
        reference = np.stack([p.logits if p.logits is not None else p.embedding
                              for p in pipe.batch(PHOTOS)])
    for precision, least in (("int8", 0.98), ("fp16", 0.999)):
        out = tmp_path / f"{family}.{precision}.onnx"
        quantize_model(fp32, out, QuantizeRequest(
            precision, data=str(DEMO_CALIBRATION),
            calibration=CalibrationOptions(num_images=64)))
        with vitedge.open(out, keep_logits=True) as pipe:
            got = np.stack([p.logits if p.logits is not None else p.embedding
                            for p in pipe.batch(PHOTOS)])
        assert agreement(reference, got).cosine_min >= least, (family, precision)


def test_archs_lists_the_new_families(capsys):
    code, out, _ = run_cli(["archs", "--json"], capsys)
    names = {a["name"] for a in json.loads(out)["architectures"]}
    assert {"vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
            "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224",
            "vit_base_patch16_siglip_224", "eva02_small_patch14_224"} <= names


@pytest.mark.parametrize("change, expected", [
    ({"model_args": {"rope_type": "mixed"}}, "rope_type='mixed'"),
    ({"model_args": {"qk_norm": True}}, "qk_norm=True"),
])
def test_what_is_not_supported_is_refused_naming_the_option(change, expected, tmp_path, capsys):
    import shutil

    folder = tmp_path / "eva"
    shutil.copytree(FIXTURES / "eva02_small", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"].update(change["model_args"])
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["export", str(folder), "-o", str(tmp_path / "x.onnx")], capsys)
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1
