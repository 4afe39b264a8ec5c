"""Networks: the benchmark ``SmallCNN`` and MONAI networks by name."""

from nvflare_gia.models.networks import MODEL_NAMES, SmallCNN, build_model, build_model_from_state, resolve_model_name

__all__ = ["MODEL_NAMES", "SmallCNN", "build_model", "build_model_from_state", "resolve_model_name"]
