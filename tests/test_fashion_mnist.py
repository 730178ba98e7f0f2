"""The shipped demo model (a ViT trained on Fashion-MNIST) holds its accuracy in INT8 and
FP16, and so does its stress copy, whose LayerNorm and attention-value outliers defeat
per-tensor scales without equalisation. Measured on the 2,000 shipped test images against
labels and against the FP32 export (the full 10,000-image split is in
benchmarks/fashion_mnist_accuracy.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from vitedge.evaluate import EvalResult, evaluate
from vitedge.export import ExportOptions, export_onnx
from vitedge.fileio import write_bytes_atomic
from vitedge.options import EvalOptions
from vitedge.quantize.calibrate import CalibrationOptions, calibrate
from vitedge.quantize.equalize import with_outlier_channels
from vitedge.quantize.qdq import QuantizeOptions
from vitedge.quantize.quantizer import QuantizeRequest, quantize_model

ROOT = Path(__file__).parents[1]
CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
CALIBRATION = ROOT / "calibration" / "fashion-mnist"
TEST_IMAGES = ROOT / "evaluation" / "fashion-mnist"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("fmnist")
    fp32 = work / "fp32.onnx"
    export_onnx(CHECKPOINT, fp32, ExportOptions())
    stress = work / "stress.onnx"
    write_bytes_atomic(stress, with_outlier_channels(onnx.load(str(fp32))).SerializeToString())
    return {"fp32": fp32, "stress": stress}


DEFAULT_QDQ = QuantizeOptions()
DEFAULT_CALIBRATION = CalibrationOptions()


def quantized(model: Path, precision: str, qdq: QuantizeOptions = DEFAULT_QDQ,
              calibration: CalibrationOptions = DEFAULT_CALIBRATION) -> EvalResult:
    out = model.with_name(f"{model.stem}.{precision}.onnx")
    table = calibrate(model,
                      model.with_name(f"{model.stem}.{calibration.method}.{calibration.smooth_alpha}.json"),
                      replace(calibration, data=CALIBRATION))
    quantize_model(model, out, QuantizeRequest(precision, calib=str(table.output), qdq=qdq))
    return evaluate(out, EvalOptions(data=TEST_IMAGES, reference=model))


def points(r: EvalResult) -> float:
    assert r.reference_top1 is not None
    return (r.reference_top1 - r.top1) * 100


def test_fp32_export_is_a_real_classifier(models):
    r = evaluate(models["fp32"], EvalOptions(data=TEST_IMAGES))
    assert r.images == 2000
    assert r.top1 > 0.8 and r.top5 > 0.99  # 85.9 % on the full split (training log)


TARGETS = {"int8": (0.5, 0.99), "fp16": (0.1, 0.998)}
"""precision -> (most top-1 points lost, least top-1 agreement with FP32), from the issue."""


@pytest.mark.parametrize("model", ["fp32", "stress"])
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_quantized_model_holds_accuracy(models, model, precision):
    """INT8 (`vit` scheme, default calibration) and FP16 within the targets; on the stress
    copy INT8 needs the channel equalisation, on by default."""
    r = quantized(models[model], precision)
    most_lost, least_agreement = TARGETS[precision]
    assert r.agreement is not None
    assert points(r) <= most_lost
    assert r.agreement.top1_agreement >= least_agreement


def test_stress_copy_computes_the_same_function(models):
    r = evaluate(models["stress"], EvalOptions(data=TEST_IMAGES, reference=models["fp32"]))
    assert r.agreement is not None
    assert r.agreement.top1_agreement == 1.0 and r.top1 == r.reference_top1
    assert r.agreement.cosine > 0.99999


def test_stress_copy_defeats_plain_per_tensor_int8(models):
    """Without equalisation the outlier channels cost accuracy: the stress is real."""
    plain = quantized(models["stress"], "int8", QuantizeOptions(smooth=False),
                      CalibrationOptions(method="minmax", smooth_alpha=0.0))
    equalised = quantized(models["stress"], "int8")
    assert plain.agreement is not None and equalised.agreement is not None
    assert plain.agreement.mean_kl > 3 * equalised.agreement.mean_kl
    assert plain.agreement.top1_agreement < equalised.agreement.top1_agreement
