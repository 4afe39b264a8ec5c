"""nvflare_gia: measure and defend against gradient inversion attacks in NVIDIA FLARE jobs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
