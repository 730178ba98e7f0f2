"""The one compiled part: the exact frame path's resampler (vitedge/runtime/native/resample.c), a
plain C library loaded with ctypes. Optional: where no C compiler is (or VITEDGE_PURE=1, for
a pure-Python wheel another machine installs), the package installs without it and resizes
with Pillow alone, the same bytes, slower."""

import os

from setuptools import Extension, setup

native = [] if os.environ.get("VITEDGE_PURE") == "1" else [
    Extension("vitedge.runtime.native._resample", ["vitedge/runtime/native/resample.c"], optional=True,
              extra_compile_args=["-O3"] if os.name != "nt" else [])]
setup(ext_modules=native)
