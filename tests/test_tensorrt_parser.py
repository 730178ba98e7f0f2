"""vitedge's hand-written TensorRT operator table and TensorRT for RTX's real ONNX parser
give the same verdict (parses / rejected) on every ONNX model the test suite wrote (recorded
by tests/conftest.py, so no list to keep in sync), and on a set this test makes itself: the
export (images, patches, frames, pixels, attention outputs), FP16, INT8, INT8 + attention, and the
ONNX Runtime artifacts, which both must reject. Runs last; skips without tensorrt_rtx."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, WRITTEN_ONNX

pytest.importorskip("tensorrt_rtx")


def own_set(folder: Path) -> list[Path]:
    from vitedge.deploy import BuildOptions, build
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.options import QuantizeOptions, QuantizeRequest
    from vitedge.quantize.quantizer import quantize_model

    made = []
    for name, opts in (("images", ExportOptions()), ("patches", ExportOptions(input_kind="patches")),
                       ("frames", ExportOptions(input_kind="frames")),
                       ("pixels", ExportOptions(input_kind="pixels")),
                       ("attn", ExportOptions(attention_outputs=True))):
        export_onnx(DEMO_CHECKPOINT, folder / f"{name}.onnx", opts)
        made.append(folder / f"{name}.onnx")
    fp32 = folder / "images.onnx"
    for name, request in (
            ("fp16", QuantizeRequest("fp16")),
            ("int8", QuantizeRequest("int8", data=str(DEMO_CALIBRATION))),
            ("int8attn", QuantizeRequest("int8", data=str(DEMO_CALIBRATION),
                                         qdq=QuantizeOptions(attention=True)))):
        quantize_model(fp32, folder / f"{name}.onnx", request)
        made.append(folder / f"{name}.onnx")
    for precision in ("fp32", "int8"):
        made.append(build(fp32, folder / f"images.{precision}.ort.onnx",
                          BuildOptions(precision=precision, data=str(DEMO_CALIBRATION),
                                       backend="onnxruntime")).artifact)
    return made


def test_the_operator_table_and_the_real_parser_agree_on_every_model(tmp_path):
    from vitedge.backends.tensorrt_rtx.parser import parser_problems
    from vitedge.export.tensorrt_ops import tensorrt_problems

    files = list(dict.fromkeys([*own_set(tmp_path), *WRITTEN_ONNX]))
    checked, disagree, verdicts = 0, [], {"parses": 0, "rejected": 0}
    for f in files:
        if not f.is_file():
            continue
        model = onnx.load(str(f))
        table, real = tensorrt_problems(model), parser_problems(model)
        assert real is not None
        checked += 1
        verdicts["rejected" if real else "parses"] += 1
        if bool(table) != bool(real):
            disagree.append(f"{f.name}: table {table[:1] or 'ok'}, parser {real[:1] or 'ok'}")
    print(f"\n{checked} ONNX models checked by both: {verdicts}")
    assert checked >= 9 and verdicts["parses"] >= 7 and verdicts["rejected"] >= 2
    assert not disagree, "the operator table and the parser disagree on: " + "; ".join(disagree)
