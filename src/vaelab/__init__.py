"""vaelab: variational autoencoders and variational inference on PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
