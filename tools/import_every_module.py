"""Import every module of the installed vitedge that needs no torch (tests/import_rules.toml
names those that do), with torch made unimportable: what a device without torch can load.
Run from outside the checkout, so the installed package is the one imported.

    python tools/import_every_module.py tests/import_rules.toml"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: vitedge depends on tomli there
    import tomli as tomllib

sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
needs_torch = set(tomllib.loads(Path(sys.argv[1]).read_text())["torch"])
import vitedge  # noqa: E402

names = sorted(m.name for m in pkgutil.walk_packages(vitedge.__path__, "vitedge."))
for name in names:
    if name not in needs_torch:
        importlib.import_module(name)
checkout = Path(sys.argv[1]).resolve().parents[1]
if Path(vitedge.__file__).resolve().is_relative_to(checkout / "vitedge"):
    sys.exit(f"vitedge was imported from the checkout ({vitedge.__file__}), not installed")
print(f"Python {sys.version.split()[0]}: {len(names) - len(needs_torch)} vitedge modules "
      f"import without torch, from {Path(vitedge.__file__).parent}")
