"""Networks: the benchmark ``SmallCNN`` and MONAI networks by name."""

from nvflare_gia.models.networks import MODEL_NAMES, SmallCNN, build_model

__all__ = ["MODEL_NAMES", "SmallCNN", "build_model"]
