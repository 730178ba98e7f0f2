"""Where preprocessing and patchify run, measured with `vitedge bench` in one process: the
demo model exported three ways (float images, host patchify into patch vectors, uint8
frames normalised and patchified in the graph), FP32 and INT8, on random 640x480 BGR
frames. On a CPU the three differ only in where the same arithmetic happens; on a GPU
the frames model also sends a quarter of the bytes. Run on demand:
`.venv/bin/python benchmarks/placement.py`. Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import tempfile
from pathlib import Path

from results import machine, publish

from vitedge.bench import BenchOptions, bench
from vitedge.deploy import BuildOptions, build
from vitedge.export import ExportOptions, export_onnx

ROOT = Path(__file__).parents[1]
CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = []
        for kind in ("images", "patches", "frames"):
            onnx_path = Path(tmp) / f"fmnist.{kind}.onnx"
            export_onnx(CHECKPOINT, onnx_path, ExportOptions(input_kind=kind, verify=False))
            artifacts.append(str(onnx_path))
            built = build(onnx_path, options=BuildOptions(precision="int8", profile="cpu",
                                                  data=str(ROOT / "calibration" / "fashion-mnist")))
            artifacts.append(str(built.artifact))
        results = bench(artifacts, BenchOptions(batches=(1, 8), warmup=10, iterations=200))
    rows = []
    for r in results:
        s = r.stages
        rows.append(f"| {Path(r.artifact).name} | {r.batch} | {s['decode'].mean:.3f} | "
                    f"{s['preprocess'].mean:.3f} | {s['patchify'].mean:.3f} | {s['infer'].mean:.3f} | "
                    f"{r.end_to_end.mean:.3f} | {r.throughput_fps:.0f} |")
    section = (
        "\n## Preprocessing and patchify placement (`benchmarks/placement.py`)\n\n"
        f"Machine: {machine()}, ONNX Runtime CPU; the demo model, random "
        "640x480 BGR frames, 200 iterations, all six artifacts interleaved in one process; mean "
        "ms per call.\n\n| artifact | batch | decode | preprocess | patchify | infer | end to end "
        "| frames/s |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    publish(section)


if __name__ == "__main__":
    main()
