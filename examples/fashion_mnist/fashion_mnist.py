"""Train vitedge's demo model, a small ViT, on Fashion-MNIST on a CPU, and write the
image folders the repository ships for calibration and evaluation.

    python examples/fashion_mnist/fashion_mnist.py train -o examples/fashion_mnist/vit_fmnist.safetensors
    python examples/fashion_mnist/fashion_mnist.py images --split train --count 512 -o calibration/fashion-mnist
    python examples/fashion_mnist/fashion_mnist.py images --split test --count 2000 -o evaluation/fashion-mnist
    python examples/fashion_mnist/fashion_mnist.py images --split test -o /tmp/fmnist-test   # all 10,000
    python examples/fashion_mnist/fashion_mnist.py stress build/demo/fmnist.onnx -o build/demo/fmnist-stress.onnx

The data comes from the Debian package `dataset-fashion-mnist` (Zalando Research, MIT
licence): `apt-get install dataset-fashion-mnist`.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
          "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530


def folder_name(label: str) -> str:
    """A class folder name `vitedge eval` matches to the label ("T-shirt/top" -> tshirt-top)."""
    return label.lower().replace("/", "-").replace(" ", "-").replace("t-shirt", "tshirt")


def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) from the IDX files."""
    prefix = "train" if split == "train" else "t10k"
    paths = [DATA_DIR / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"error: {missing[0]} not found; run `apt-get install dataset-fashion-mnist`")
    with gzip.open(paths[0]) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(paths[1]) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def demo_config():  # type: ignore[no-untyped-def]
    from vitedge.architecture import ViTConfig

    return ViTConfig(img_size=(28, 28), patch_size=4, in_chans=1, embed_dim=64, depth=6,
                     num_heads=4, mlp_hidden=128, num_classes=len(LABELS), norm_eps=1e-6)


def train(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from vitedge.manifest import Manifest, Preprocess
    from vitedge.model.native import save_native_checkpoint
    from vitedge.model.vit import VisionTransformer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    images, labels = read_split("train")
    x_all = (torch.from_numpy(images.copy()).float().div(255).sub(MEAN).div(STD)).unsqueeze(1)
    y_all = torch.from_numpy(labels.astype(np.int64))
    cfg = demo_config()
    model = VisionTransformer(cfg)
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(x_all) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_all))
        seen = correct = 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x, y = x_all[idx], y_all[idx]
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            shift = torch.randint(-2, 3, (2,))
            x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
        print(f"epoch {epoch + 1}/{args.epochs}: train top-1 {correct / seen:.4f}, "
              f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    test_x, test_y = read_split("test")
    with torch.no_grad():
        tx = torch.from_numpy(test_x.copy()).float().div(255).sub(MEAN).div(STD).unsqueeze(1)
        pred = torch.cat([model(tx[i:i + 1000]).argmax(1) for i in range(0, len(tx), 1000)])
    acc = float((pred.numpy() == test_y).mean())
    print(f"test top-1 {acc:.4f} (10,000 images), trained in {time.time() - start:.0f}s")
    prep = Preprocess(crop=(28, 28), resize=(28, 28), resize_mode="exact", interpolation="bilinear",
                      mean=(MEAN,), std=(STD,))
    manifest = Manifest(architecture=cfg, preprocess=prep, labels=LABELS, source={
        "format": "vitedge", "dataset": "Fashion-MNIST (Zalando Research, MIT licence)",
        "training": f"{args.epochs} epochs, batch {args.batch}, AdamW lr {args.lr}, seed {args.seed}",
        "test_top1": round(acc, 4)})
    save_native_checkpoint(args.output, model.state_dict(), manifest)
    print(f"wrote {args.output}")


def write_images(args: argparse.Namespace) -> None:
    from PIL import Image

    images, labels = read_split(args.split)
    count = len(images) if args.count is None else min(args.count, len(images))
    order = np.random.default_rng(args.seed).permutation(len(images))[:count]
    out = Path(args.output)
    for label in LABELS:
        (out / folder_name(label)).mkdir(parents=True, exist_ok=True)
    for i in sorted(order):
        Image.fromarray(images[i]).save(out / folder_name(LABELS[labels[i]]) / f"{args.split}-{i:05d}.png")
    print(f"wrote {count} {args.split} images to {out}")


def stress(args: argparse.Namespace) -> None:
    """The exported model with a few LayerNorm and attention-value channels scaled 20-60x
    (and the next Linear scaled back): the same function, with the activation outliers of
    large pretrained ViTs."""
    import onnx

    from vitedge.fileio import write_bytes_atomic
    from vitedge.quantize.equalize import with_outlier_channels

    stressed = with_outlier_channels(onnx.load(args.model), seed=args.seed)
    write_bytes_atomic(args.output, stressed.SerializeToString())
    print(f"wrote {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the demo ViT and write a vitedge checkpoint")
    t.add_argument("-o", "--output", default="examples/fashion_mnist/vit_fmnist.safetensors")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(run=train)
    w = sub.add_parser("images", help="write a split (or a seeded sample of it) as PNG class folders")
    w.add_argument("--split", choices=["train", "test"], required=True)
    w.add_argument("--count", type=int, help="how many (a seeded random sample); default all")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("-o", "--output", required=True)
    w.set_defaults(run=write_images)
    st = sub.add_parser("stress", help="an exported model with LayerNorm / V outlier channels")
    st.add_argument("model")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("-o", "--output", required=True)
    st.set_defaults(run=stress)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
