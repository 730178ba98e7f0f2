#!/bin/sh
# Makes the figures in this folder from the demo model: the FP32 export and its INT8
# model (the shipped calibration set), explained on a Fashion-MNIST test image and on a
# real photograph from scikit-image's sample data. Run from the repository root after
# `make setup`: sh docs/explain/make_figures.sh
set -e
BIN=.venv/bin
WORK=build/docs-explain
OUT=docs/explain
mkdir -p "$WORK"
cp examples/fashion_mnist/vit_fmnist.safetensors "$WORK/fmnist.safetensors"
"$BIN/vitedge" export "$WORK/fmnist.safetensors" -o "$WORK/fmnist.onnx"
"$BIN/vitedge" quantize "$WORK/fmnist.onnx" --precision int8 --data calibration/fashion-mnist \
    -o "$WORK/fmnist.int8.onnx"
for method in cls rollout; do
    "$BIN/vitedge" explain "$WORK/fmnist.int8.onnx" \
        evaluation/fashion-mnist/ankle-boot/test-00108.png vitedge/data/photos/chelsea.jpg \
        --compare "$WORK/fmnist.onnx" --method "$method" -o "$OUT" --json > "$WORK/$method.json"
done
rm -f "$OUT"/*.npy
"$BIN/vitedge" inspect "$WORK/fmnist.onnx" --pos-embed "$OUT/pos-embed.png" > /dev/null
