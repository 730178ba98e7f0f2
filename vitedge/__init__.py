"""vitedge: Vision Transformers from a training checkpoint to a fast, verified edge model."""

__version__ = "0.1.0"

__all__ = ["__version__"]
