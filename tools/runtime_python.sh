#!/usr/bin/env bash
# The runtime on another Python (JetPack 6: 3.10, JetPack 7: 3.12), as a device has it: a
# virtual environment under build/ with only the runtime's wheels (no torch), the package
# installed from this checkout, every torch-free module imported from the installed
# package, and the runtime tests run against it (on the demo artifacts the main environment
# built: VITEDGE_DEMO_ARTIFACTS).
# Usage: tools/runtime_python.sh VERSION   (e.g. 3.10; found under $(pyenv root)/versions)
set -euo pipefail
unset PYTHONPATH  # the installed package, not a checkout on the path
version=$1
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
python=$(ls -d "$root"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V | tail -1 || true)
[ -n "$python" ] || python=$(command -v "python$version" || true)
if [ -z "$python" ] || ! "$python" -c 'import sys' 2>/dev/null; then
  echo "Python $version not found (pyenv install $version, or put python$version on PATH)" >&2
  exit 1
fi
venv=build/py$version
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "${pip[@]}" --upgrade pip
  "${pip[@]}" opencv-python-headless pytest
  touch "$venv/.installed"
fi
"${pip[@]}" --force-reinstall --no-deps . && "${pip[@]}" .  # the checkout, and its dependencies
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "$venv has torch: it is not a runtime-only environment" >&2
  exit 1
fi
here=$PWD
cd build  # away from the checkout: the installed package is what imports
"$here/$venv/bin/python" "$here/tools/import_every_module.py" "$here/tests/import_rules.toml"
# pip built the C resampler where a C compiler is: then it must load
VITEDGE_EXPECT_NATIVE=$(command -v cc >/dev/null 2>&1 && echo 1 || echo 0) \
"$here/$venv/bin/python" -m pytest -q -p no:cacheprovider --import-mode=importlib \
  --rootdir "$here" "$here/tests/test_runtime_imports.py" "$here/tests/test_runtime_portable.py"
