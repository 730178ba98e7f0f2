"""A checkpoint of a named architecture with random weights (timm's initialisation): what
the benchmarks measure speed on and what a user can try the whole path on before the real
weights arrive. Needs torch and safetensors."""

from __future__ import annotations

from pathlib import Path


def random_checkpoint(arch: str, path: str | Path, seed: int = 0) -> Path:
    """Write a `.safetensors` checkpoint of `arch` (`vitedge archs` lists the names) with
    seeded random weights at `path`; export it with `ExportOptions(arch=arch)`."""
    import torch
    from safetensors.torch import save_file

    from vitedge.errors import VitedgeError
    from vitedge.fileio import atomic_path
    from vitedge.model.archs import find_arch
    from vitedge.model.formats import config_from_timm_args
    from vitedge.model.vit import VisionTransformer

    named = find_arch(arch)
    if named.layout == "torchvision":
        raise VitedgeError(f"random checkpoints are written in timm's layout; {arch} is a "
                           "torchvision name", "use a timm name, e.g. vit_base_patch16_224")
    torch.manual_seed(seed)
    model = VisionTransformer(config_from_timm_args(named.args, distilled=named.distilled,
                                                    layout=named.layout,
                                                    norm_eps=named.norm_eps))
    model.init_weights()
    with atomic_path(path) as tmp:
        save_file(model.state_dict(), str(tmp))
    return Path(path)
