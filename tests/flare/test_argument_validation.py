"""Every FLARE filter and the widget reject a bad argument at construction (deploy time).

The error is a ``TypeError`` or a ``ValueError`` subclass (``ConfigError``) whose message follows
STYLE.md §7, ``"{Class}: {arg} must be {constraint}, got {value!r}."``: it names the argument,
says what is allowed and shows the value received. Each row of the tables below is one bad
argument; ``match=`` checks the argument's name, ``must be`` and the value's ``repr``.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import pytest

from nvflare_gia.flare.audit_filters import CalibratedDefenseFilter, LeakageGateFilter
from nvflare_gia.flare.filters import (
    GaussianNoiseFilter,
    LaplacianNoiseFilter,
    LatentPerturbationFilter,
    ShadowModelFilter,
)
from nvflare_gia.flare.widget import GradientInversionWidget

NAN = float("nan")
INF = float("inf")

#: Bad values shared by every ``seed`` argument of the filters (seeds are None or an int >= 0).
BAD_FILTER_SEEDS = [-1, 1.5, True, "0", [0]]
#: Bad values shared by every positive real argument.
BAD_POSITIVE = [0, 0.0, -1.0, -1e-12, NAN, INF, -INF, "0.1", None, True, [0.1]]
#: Bad values shared by every ``num_threads`` argument (None or an int >= 1).
BAD_THREADS = [0, -2, 1.5, True, "1"]
#: Bad values of ``data_spec`` (a file name, a path or JSON text).
BAD_DATA_SPEC = ["", "   ", None, 3, ["gia_data.json"]]
#: Bad values of the self-audit time budgets (None = no time limit, or a number > 0).
BAD_AUDIT_SECONDS = [0, 0.0, -1.0, NAN, INF, "60", True]


def _rows(cls: type, arg: str, values: list[Any]) -> list:
    return [pytest.param(cls, arg, value, id=f"{cls.__name__}-{arg}={value!r}") for value in values]


FILTER_ROWS = [
    *_rows(GaussianNoiseFilter, "sigma0", BAD_POSITIVE),
    *_rows(GaussianNoiseFilter, "percentile", [0, 0.0, -5, 100.5, 1000, NAN, INF, "95", None]),
    *_rows(GaussianNoiseFilter, "perturb_bn_stats", [1, 0, "yes", "false", None]),
    *_rows(GaussianNoiseFilter, "calibration_samples", [999, 0, -1, 1000.0, True, "1000"]),
    *_rows(GaussianNoiseFilter, "seed", BAD_FILTER_SEEDS),
    *_rows(LaplacianNoiseFilter, "b", BAD_POSITIVE),
    *_rows(LaplacianNoiseFilter, "perturb_bn_stats", [1, "true", None]),
    *_rows(LaplacianNoiseFilter, "seed", BAD_FILTER_SEEDS),
    *_rows(ShadowModelFilter, "budget", BAD_POSITIVE),
    *_rows(ShadowModelFilter, "mask_fraction", [0, 0.0, -0.1, 1.5, NAN, "0.1", None]),
    *_rows(ShadowModelFilter, "saliency", ["gradcm", "GradCAM", "grad-cam", "", None, 3]),
    *_rows(ShadowModelFilter, "noise_std", BAD_POSITIVE),
    *_rows(ShadowModelFilter, "target_layer", ["", "   ", 5]),
    *_rows(ShadowModelFilter, "seed", BAD_FILTER_SEEDS),
    *_rows(ShadowModelFilter, "num_threads", BAD_THREADS),
    *_rows(ShadowModelFilter, "data_spec", BAD_DATA_SPEC),
    *_rows(LatentPerturbationFilter, "epsilon", BAD_POSITIVE),
    *_rows(LatentPerturbationFilter, "task_loss_bound", BAD_POSITIVE),
    *_rows(LatentPerturbationFilter, "steps", [0, -1, 1.5, True, "5", None]),
    *_rows(LatentPerturbationFilter, "attacker_steps", [0, -3, 2.0, False, "5", None]),
    *_rows(LatentPerturbationFilter, "split_layer", ["", "  ", 3]),
    *_rows(LatentPerturbationFilter, "seed", BAD_FILTER_SEEDS),
    *_rows(LatentPerturbationFilter, "num_threads", BAD_THREADS),
    *_rows(LatentPerturbationFilter, "data_spec", BAD_DATA_SPEC),
    *_rows(LeakageGateFilter, "metric", ["RDLV", "sim", "psnr", "", None, 3]),
    *_rows(LeakageGateFilter, "threshold", [NAN, INF, -INF, "0", None, True, [0.0]]),
    *_rows(LeakageGateFilter, "every_n_rounds", [0, -1, 1.5, True, "2", None]),
    *_rows(LeakageGateFilter, "max_images", [0, -1, 8.0, True, "32", None]),
    *_rows(LeakageGateFilter, "max_seconds", BAD_AUDIT_SECONDS),
    *_rows(LeakageGateFilter, "max_iterations", [0, -10, 1.5, True, "100", None]),
    *_rows(LeakageGateFilter, "restarts", [0, -1, 2.0, True, None]),
    *_rows(LeakageGateFilter, "seed", [-1, 1.5, True, "0", None]),
    *_rows(LeakageGateFilter, "device", ["gpu", "", None, 0]),
    *_rows(LeakageGateFilter, "num_threads", BAD_THREADS),
    *_rows(LeakageGateFilter, "parallel_restarts", [0, -1, 2.0, True, "2", None]),
    *_rows(LeakageGateFilter, "confirmations", [-1, 1.5, True, "1", None]),
    *_rows(LeakageGateFilter, "block_lower_bound", [1, 0, "yes", None]),
    *_rows(LeakageGateFilter, "prior", ["mean", "VAL_MEAN", "", None, 0]),
    *_rows(LeakageGateFilter, "data_spec", BAD_DATA_SPEC),
    *_rows(CalibratedDefenseFilter, "defense", ["gausian", "Gaussian", "dp", "", None, 3]),
    *_rows(CalibratedDefenseFilter, "target", [NAN, INF, -INF, "0", None, True]),
    *_rows(CalibratedDefenseFilter, "metric", ["RDLV", "mse", "", None]),
    *_rows(CalibratedDefenseFilter, "margin", [-0.1, NAN, INF, "0.3", None, True]),
    *_rows(CalibratedDefenseFilter, "min_strength", [0, -1.0, NAN, INF, "0.1", True, 400.0, 1e3]),
    *_rows(CalibratedDefenseFilter, "max_strength", [0, -1.0, NAN, INF, "100", True, 0.1, 0.05]),
    *_rows(CalibratedDefenseFilter, "ladder_factor", [1, 1.0, 0.5, 0, NAN, INF, "2", None, True]),
    *_rows(CalibratedDefenseFilter, "confirmations", [-1, 1.5, True, "1", None]),
    *_rows(CalibratedDefenseFilter, "block_lower_bound", [1, 0, "yes", None]),
    *_rows(CalibratedDefenseFilter, "total_seconds", BAD_AUDIT_SECONDS),
    *_rows(CalibratedDefenseFilter, "max_images", [0, -1, 8.0, True, "32", None]),
    *_rows(CalibratedDefenseFilter, "max_seconds", BAD_AUDIT_SECONDS),
    *_rows(CalibratedDefenseFilter, "max_iterations", [0, -10, 1.5, True, "100", None]),
    *_rows(CalibratedDefenseFilter, "restarts", [0, -1, 2.0, True, None]),
    *_rows(CalibratedDefenseFilter, "attack_seed", [-1, 1.5, True, "0", None]),
    *_rows(CalibratedDefenseFilter, "device", ["gpu", "", None]),
    *_rows(CalibratedDefenseFilter, "num_threads", BAD_THREADS),
    *_rows(CalibratedDefenseFilter, "parallel_restarts", [0, -1, 2.0, True, "2", None]),
    *_rows(CalibratedDefenseFilter, "seed", BAD_FILTER_SEEDS),
    *_rows(CalibratedDefenseFilter, "prior", ["retrieval", "", None]),
    *_rows(CalibratedDefenseFilter, "data_spec", BAD_DATA_SPEC),
]

WIDGET_ROWS = [
    *_rows(GradientInversionWidget, "clients", ["site-1", [], [""], ["site-1", 2], {"site-1"}, 3]),
    *_rows(GradientInversionWidget, "start_round", [-1, 1.0, True, "0", None]),
    *_rows(GradientInversionWidget, "frequency", [0, -1, 2.5, False, "1"]),
    *_rows(GradientInversionWidget, "max_images", [0, -4, 8.0, "32"]),
    *_rows(GradientInversionWidget, "max_seconds", [0, -1.0, NAN, INF, True, "60", None]),
    *_rows(GradientInversionWidget, "max_iterations", [0, -10, 1.5, True, "100", None]),
    *_rows(GradientInversionWidget, "restarts", [0, -1, 2.0, True, None]),
    *_rows(GradientInversionWidget, "objective", ["cosin", "", None, 3]),
    *_rows(GradientInversionWidget, "seed", [1.5, True, "0", None]),
    *_rows(GradientInversionWidget, "device", ["gpu", "", None]),
    *_rows(GradientInversionWidget, "prior", ["mean", "", None]),
    *_rows(GradientInversionWidget, "queue_size", [0, -1, 1.5, True]),
    *_rows(GradientInversionWidget, "end_run_wait_s", [0, -5.0, NAN, "300", None, False]),
    *_rows(GradientInversionWidget, "output_dir", ["", "/abs/gia", "../outside", "a/../../b", None, 3]),
    *_rows(GradientInversionWidget, "num_threads", BAD_THREADS),
    *_rows(GradientInversionWidget, "parallel_restarts", [0, -1, 2.0, True, "2", None]),
    *_rows(GradientInversionWidget, "audit", [1, "yes", "false", None]),
    *_rows(GradientInversionWidget, "tensorboard_images", [1, "yes", None]),
    *_rows(GradientInversionWidget, "data_spec_file", ["", "   ", None, 3]),
    *_rows(GradientInversionWidget, "networks", ["nvflare_gia.models.SmallCNN", [3], [None], {"nvflare_gia.models.SmallCNN"}]),
]


def _message_pattern(arg: str, value: Any) -> str:
    """``{arg} must be …, got {value!r}`` (STYLE.md §7), as a regular expression."""
    return rf"\b{re.escape(arg)} must be .+, got {re.escape(repr(value))}"


@pytest.mark.parametrize(("cls", "arg", "value"), FILTER_ROWS + WIDGET_ROWS)
def test_bad_argument_is_rejected_at_construction_with_a_message_naming_it(cls, arg, value):
    with pytest.raises((TypeError, ValueError), match=_message_pattern(arg, value)):
        cls(**{arg: value})


GOOD_ROWS = [
    (GaussianNoiseFilter, {"sigma0": 1e-9, "percentile": 100.0, "perturb_bn_stats": False, "calibration_samples": 1000, "seed": 0}),
    (GaussianNoiseFilter, {"percentile": 1e-6, "calibration_samples": None, "seed": None}),
    (LaplacianNoiseFilter, {"b": 1e-12, "perturb_bn_stats": False, "seed": 2**40}),
    (ShadowModelFilter, {"budget": 10.0, "mask_fraction": 1.0, "saliency": "input_gradient", "noise_std": 1e-3,
                         "target_layer": "features.8", "seed": 0, "num_threads": 1, "data_spec": '{"source": "synthetic"}'}),
    (LatentPerturbationFilter, {"epsilon": 1e-3, "task_loss_bound": 5.0, "steps": 1, "attacker_steps": 1,
                                "split_layer": "features.7", "seed": 0, "num_threads": 1, "data_spec": "/abs/spec.json"}),
    (GradientInversionWidget, {"clients": ["site-1"], "start_round": 0, "frequency": 1, "max_images": 1, "max_seconds": 0.5,
                               "max_iterations": 1, "restarts": 1, "objective": "l2", "seed": 0, "device": "cpu",
                               "prior": "val_mean", "queue_size": 1, "end_run_wait_s": 1e-3, "output_dir": "gia/sub",
                               "num_threads": 1, "parallel_restarts": 1, "networks": ["nvflare_gia.models.SmallCNN"]}),
    (GradientInversionWidget, {"clients": ("site-1", "site-2"), "max_seconds": 60, "end_run_wait_s": 300}),
    (LeakageGateFilter, {"metric": "ssim", "threshold": -0.5, "every_n_rounds": 1, "confirmations": 0, "max_images": 1, "max_seconds": None,
                         "max_iterations": 1, "restarts": 1, "seed": 0, "device": "cpu", "num_threads": 1, "prior": "val_retrieval",
                         "data_spec": "gia_data.json"}),
    (LeakageGateFilter, {"threshold": 1e9, "max_seconds": 1e-3, "every_n_rounds": 1000, "confirmations": 3, "parallel_restarts": 16}),
    (CalibratedDefenseFilter, {"defense": "laplacian", "target": -0.2, "metric": "ssim", "min_strength": 1e-6, "max_strength": 1e-5,
                               "ladder_factor": 1.0001, "confirmations": 0, "total_seconds": None, "max_images": 1, "max_seconds": None, "max_iterations": 1,
                               "restarts": 1, "attack_seed": 0, "device": "cpu", "num_threads": 1, "prior": "val_mean", "seed": 0,
                               "data_spec": "/abs/spec.json"}),
    (CalibratedDefenseFilter, {"defense": "shadow", "max_strength": 0.2, "seed": None, "parallel_restarts": 2}),
    (CalibratedDefenseFilter, {"defense": "latent", "min_strength": 0.01}),
]


@pytest.mark.parametrize(("cls", "kwargs"), GOOD_ROWS, ids=[f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(GOOD_ROWS)])
def test_boundary_arguments_are_accepted_and_stored_unchanged(cls, kwargs):
    component = cls(**kwargs)
    for arg, value in kwargs.items():
        stored = getattr(component, arg)
        assert stored == value or (isinstance(value, float) and math.isclose(stored, value)), arg


def test_every_constructor_argument_has_a_bad_value_in_the_tables():
    """A new argument without a row here would go unchecked: every parameter must appear in the tables."""
    covered: dict[type, set[str]] = {}
    for row in FILTER_ROWS + WIDGET_ROWS:
        cls, arg, _ = row.values
        covered.setdefault(cls, set()).add(arg)
    for cls in (GaussianNoiseFilter, LaplacianNoiseFilter, ShadowModelFilter, LatentPerturbationFilter, GradientInversionWidget,
                LeakageGateFilter, CalibratedDefenseFilter):
        parameters = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert parameters - covered.get(cls, set()) == set(), f"{cls.__name__}: no bad-value row for {sorted(parameters - covered[cls])}"
