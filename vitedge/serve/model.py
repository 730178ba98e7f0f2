"""The Triton Python-backend model that serves a vitedge artifact (copied into a model
repository as `1/model.py`; Triton imports it, this package does not run it directly).

The model's `parameters` say what it does:
- `artifact`: the model file, run through `vitedge.backends.load_runner` (any backend);
- `mode`: `tensor` (the artifact's own input: images, patches, uint8 frames or pixels),
  `image` (encoded JPEG / PNG bytes, decoded and preprocessed exactly as `vitedge.open`
  does), `preprocess` (image bytes in, the model's input tensor out: the first step of an
  ensemble in front of a TensorRT or ONNX Runtime model) or `postprocess` (its logits in,
  label, score and top-k out: the last step);
- `topk`: how many classes the top-k outputs hold.
Outputs: `logits` (FP32), `label` (BYTES), `score` (FP32), `topk_ids` (INT32),
`topk_scores` (FP32); a headless model's `embedding` (FP32); or `input` in preprocess mode. Requests Triton batched together run
as one inference; a request that cannot be served (a corrupt image) gets its own error
response and the others are answered."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# Triton's Python-backend stub embeds an interpreter that ignores PYTHONPATH: `vitedge
# serve` passes the environment's paths (vitedge and its packages) in VITEDGE_PYTHONPATH.
for _path in reversed(os.environ.get("VITEDGE_PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402 - after the paths above

try:  # present inside Triton's Python backend only
    import triton_python_backend_utils as pb
except ImportError:  # pragma: no cover - imported by vitedge's tests for its helpers
    pb = None


def _param(config: dict[str, Any], name: str, default: str = "") -> str:
    return str(config.get("parameters", {}).get(name, {}).get("string_value", default))


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from pathlib import Path

        config = json.loads(args["model_config"])
        self.mode = _param(config, "mode", "tensor")
        self.input_name = _param(config, "input", "input")  # the artifact's own input
        self.topk = int(_param(config, "topk", "5"))
        here = Path(args.get("model_repository", "."))  # REPO/<model>: relative paths start here
        self.pipe: Any = None
        self.runner: Any = None
        if self.mode in ("preprocess", "postprocess"):
            from vitedge.manifest import Manifest

            self.manifest = Manifest.from_json((here / _param(config, "manifest")).read_text())
            self.logits_name = _param(config, "logits", "logits")
        else:
            from vitedge.backends import load_runner
            from vitedge.runtime.pipeline import open_pipeline

            artifact = here / _param(config, "artifact")
            if self.mode == "tensor":
                self.runner = load_runner(artifact)
            else:
                self.pipe = open_pipeline(artifact, keep_logits=True, topk=self.topk)
                self.runner = self.pipe.model
            self.manifest = self.runner.manifest
        self.labels = self.manifest.labels or []
        self.classifier = self.manifest.architecture.num_classes > 0

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.mode == "tensor":
            return self._tensors(requests)
        if self.mode == "postprocess":
            return [self._response(pb.get_input_tensor_by_name(r, self.logits_name).as_numpy(),
                                   with_logits=False) for r in requests]
        return self._images(requests)

    def _tensors(self, requests: list[Any]) -> list[Any]:
        parts = [pb.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        logits = self.runner.infer(np.concatenate(parts))
        out, start = [], 0
        for part in parts:
            out.append(self._response(logits[start:start + len(part)]))
            start += len(part)
        return out

    def _images(self, requests: list[Any]) -> list[Any]:
        from vitedge.errors import VitedgeError
        from vitedge.runtime.preprocess import load_image

        decoded: list[tuple[int, list[Any]]] = []
        out: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            blobs = pb.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            try:  # decoded as vitedge.open decodes a file: pixel budget, EXIF orientation
                decoded.append((i, [load_image(bytes(blob)) for blob in blobs]))
            except VitedgeError as exc:  # a bad image is this request's error alone
                out[i] = pb.InferenceResponse(error=client_error(exc.message))
        if decoded:
            frames = [im for _, images in decoded for im in images]
            try:
                if self.mode == "preprocess":
                    from vitedge.runtime.preprocess import model_input

                    tensors = np.stack([model_input(im, self.manifest) for im in frames])
                else:
                    predictions = self.pipe.batch(frames)
            except VitedgeError as exc:
                for i, _ in decoded:
                    out[i] = pb.InferenceResponse(error=pb.TritonError(str(exc)))
                return out
            start = 0
            for i, images in decoded:
                n = len(images)
                if self.mode == "preprocess":
                    out[i] = pb.InferenceResponse([pb.Tensor("input", tensors[start:start + n])])
                else:
                    out[i] = self._response(np.stack([
                        np.asarray(p.logits if self.classifier else p.embedding)
                        for p in predictions[start:start + n]]))
                start += n
        return out

    def _response(self, logits: np.ndarray, with_logits: bool = True) -> Any:
        if not self.classifier:  # a headless model: its embedding
            return pb.InferenceResponse([pb.Tensor("embedding", logits.astype(np.float32))])
        ids, scores, label_names = top_classes(logits, self.topk, self.labels,
                                               self.manifest.score)
        return pb.InferenceResponse([
            *([pb.Tensor("logits", logits.astype(np.float32))] if with_logits else []),
            pb.Tensor("label", label_names[:, :1]),
            pb.Tensor("score", scores[:, :1]),
            pb.Tensor("topk_ids", ids),
            pb.Tensor("topk_scores", scores)])

    def finalize(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
        elif self.runner is not None:
            self.runner.close()


def client_error(message: str) -> Any:
    """An error the client caused (a corrupt image): Triton's INVALID_ARG, which its HTTP
    front end answers with 400 (a plain TritonError would be a 500, the server's fault)."""
    code = getattr(pb.TritonError, "INVALID_ARG", None)
    return pb.TritonError(message) if code is None else pb.TritonError(message, code)


def top_classes(logits: np.ndarray, k: int, labels: list[str], score: str = "softmax"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-k class ids INT32, their scores FP32 (softmax, or sigmoid for a SigLIP
    zero-shot head), their labels as bytes objects), each (batch, k): the pipeline's own
    postprocessing (`vitedge.runtime.postprocess`)."""
    from vitedge.runtime.postprocess import top_classes as ranked

    ids, top = ranked(logits, k, score)
    names = np.array([[(labels[j] if j < len(labels) else str(j)).encode() for j in row]
                      for row in ids], dtype=object)
    return ids.astype(np.int32), top.astype(np.float32), names
