"""Copy the TensorRT 10.x type stubs (package tensorrt-stubs) into typings/ for mypy.

The stubs install as a `tensorrt/` folder without a py.typed marker, so mypy skips them,
three signatures name a parameter `in`, a Python keyword, and one puts a parameter
without a default after defaulted ones: mypy cannot parse either. The copy fixes those; `mypy_path = "typings"` in pyproject.toml points mypy at it, so the
TensorRT code is checked against the real 10.x API. Run by `make setup`."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path


def _defaults_last(line: str) -> str:
    """Drop a signature's `= None` defaults when a parameter without one follows them."""
    if line.lstrip().startswith("def ") and re.search(r"= None, \w+: [^=]+?\)", line):
        return line.replace(" = None", "")
    return line


def main(target: str) -> None:
    out = Path(target)
    for package in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            sys.exit(f"error: {package} stubs not installed (pip install --no-deps tensorrt-stubs)")
        src = Path(next(iter(spec.submodule_search_locations)))
        for stub in src.glob("*.pyi"):
            text = re.sub(r"\bin: ", "in_: ", stub.read_text())
            text = "\n".join(_defaults_last(line) for line in text.splitlines())
            dest = out / package / stub.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
    print(f"TensorRT stubs ready in {out}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "typings")
