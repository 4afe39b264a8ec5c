"""Client-side defenses against gradient inversion (pure PyTorch/NumPy, no nvflare import).

Every defense pairs a frozen ``*Config`` (the one home of its defaults) with a class whose
``apply(update, *, global_state=None, context=None)`` returns a :class:`DefenseOutcome`; the FLARE
adapters are in :mod:`nvflare_gia.flare.filters`.
"""

from nvflare_gia.defenses.base import Defense, DefenseContext, DefenseOutcome
from nvflare_gia.defenses.gaussian import GaussianNoise, GaussianNoiseConfig, compute_gaussian_sigma
from nvflare_gia.defenses.laplacian import LaplacianNoise, LaplacianNoiseConfig
from nvflare_gia.defenses.latent import LatentPerturbation, LatentPerturbationConfig
from nvflare_gia.defenses.shadow import SaliencyMethod, ShadowModelConfig, ShadowModelDefense, compute_saliency, saliency_mask
from nvflare_gia.defenses.self_audit import LeakageGate, LeakageGateConfig, SelfAudit, SelfAuditConfig, SelfAuditResult
from nvflare_gia.defenses.calibrated import CalibratedDefense, CalibratedDefenseConfig, CalibrationError

__all__ = [
    "CalibratedDefense",
    "CalibratedDefenseConfig",
    "CalibrationError",
    "Defense",
    "DefenseContext",
    "DefenseOutcome",
    "GaussianNoise",
    "GaussianNoiseConfig",
    "LaplacianNoise",
    "LaplacianNoiseConfig",
    "LatentPerturbation",
    "LatentPerturbationConfig",
    "LeakageGate",
    "LeakageGateConfig",
    "SaliencyMethod",
    "SelfAudit",
    "SelfAuditConfig",
    "SelfAuditResult",
    "ShadowModelConfig",
    "ShadowModelDefense",
    "compute_gaussian_sigma",
    "compute_saliency",
    "saliency_mask",
]
