"""Gradient inversion attack engine (pure PyTorch, no nvflare import).

The BatchNorm-aware attack of Hatamizadeh et al., "Do Gradient Inversion Attacks Make Federated
Learning Unsafe?", IEEE TMI 2023: BatchNorm-statistics and label recovery from the update, then
optimisation of dummy images through a differentiable replay of the client's local training.
"""

from nvflare_gia.attack.bn_stats import (
    BNStatistics,
    biased_variance,
    bn_layer_names,
    ema_step_weights,
    recover_bn_statistics,
)
from nvflare_gia.attack.engine import (
    DEFAULT_MAX_IMAGES,
    PRIOR_NAMES,
    AttackConfig,
    AttackResult,
    DeviceName,
    GradientInversionAttack,
    InitName,
    Parametrization,
    RestartSelection,
    check_prior_name,
    prior_from_validation,
    resolve_device,
    validate_update,
)
from nvflare_gia.attack.labels import (
    LabelRecovery,
    LabelStrategy,
    counts_to_labels,
    find_classifier,
    look_up_label_strategy,
    recover_labels,
    spread_over_batches,
)
from nvflare_gia.attack.objectives import (
    OBJECTIVES,
    ObjectiveName,
    look_up_objective,
)
from nvflare_gia.attack.regularizers import (
    REGULARIZERS,
    RegularizerName,
    bn_matching_loss,
    look_up_regularizer,
)
from nvflare_gia.attack.simulate import (
    LocalTrainingSimulator,
    SimulationResult,
    layers_beyond_stride,
    read_dropout_masks,
    set_replay_mode,
    simulate_local_training,
)
from nvflare_gia.attack.threat_model import (
    NUM_STEPS_META_KEY,
    TRAINING_META_KEY,
    ThreatModel,
    bn_momenta,
)

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "PRIOR_NAMES",
    "check_prior_name",
    "prior_from_validation",
    "NUM_STEPS_META_KEY",
    "OBJECTIVES",
    "REGULARIZERS",
    "TRAINING_META_KEY",
    "AttackConfig",
    "AttackResult",
    "BNStatistics",
    "DeviceName",
    "GradientInversionAttack",
    "InitName",
    "LabelRecovery",
    "LabelStrategy",
    "LocalTrainingSimulator",
    "ObjectiveName",
    "Parametrization",
    "RegularizerName",
    "RestartSelection",
    "SimulationResult",
    "ThreatModel",
    "biased_variance",
    "bn_layer_names",
    "bn_matching_loss",
    "bn_momenta",
    "counts_to_labels",
    "ema_step_weights",
    "find_classifier",
    "layers_beyond_stride",
    "look_up_label_strategy",
    "look_up_objective",
    "look_up_regularizer",
    "read_dropout_masks",
    "recover_bn_statistics",
    "recover_labels",
    "resolve_device",
    "set_replay_mode",
    "simulate_local_training",
    "spread_over_batches",
    "validate_update",
]
