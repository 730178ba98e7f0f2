"""vitedge's version, in a module of its own: every layer may read it (the manifest, an
engine's description, `doctor`, `bench`) without importing the package's front door."""

__version__ = "0.1.0"
