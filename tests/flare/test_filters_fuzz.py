"""Property-based fuzzing of the FLARE defense filters: every task result is either blocked or defended.

Each filter gets ``FUZZ_EXAMPLES`` (10,000; the calibrated filter a fifth) generated task results through
``filter.process(shareable, fl_ctx)`` with a real ``FLContext``, after the global model was delivered
the way FLARE does it (``FLContextKey.TASK_DATA`` at ``EventType.BEFORE_TASK_EXECUTION``, or not at
all, or for another task, or forgotten at ``START_RUN``). Generated inputs: plain Shareables with
and without arrays, broken DXO encodings and headers, every ``DataKind`` and a few strings that are
not one, empty and missing data, NaN/Inf, huge (1e30), tiny (1e-30) and subnormal values, integer,
bool, float16, bfloat16, float64 and complex entries, object arrays and Python values, shapes that
differ from the global model, torch and NumPy mixed in one update, missing, renamed and extra keys,
missing or wrong ``gia_training`` meta, a previous defense in the meta, odd rounds, and return
codes other than OK.

The property checked on every call (:func:`_check_outcome`):

* the filter raises ``ContentBlockedException`` naming itself (FLARE replies
  ``TASK_RESULT_FILTER_ERROR``; nothing leaves the site); inputs that are malformed beyond doubt
  must take this branch; or
* the return code is not OK and the filter hands the same object back. FLARE's own ``DXOFilter``
  passes every non-OK result through untouched, so such a pass-through must carry no array or
  tensor anywhere (an error reply with weights in it would leave the site unfiltered); or
* it returns a Shareable holding a DXO of the input's kind (WEIGHTS or WEIGHT_DIFF) with exactly
  the global model's keys (the input's keys when no global model is cached, which only the noise
  filters accept for WEIGHT_DIFF), each value an array or tensor of the input's container, dtype
  and shape, all finite, the ``gia_defense`` meta record written, and the input's arrays not
  written to. Every entry where noise is due differs from the input: no such entry may be the
  undefended value. Integer entries and ``num_batches_tracked`` counters are unchanged.

"Where noise is due": floating-point entries other than ``num_batches_tracked``; BatchNorm
``running_mean``/``running_var`` only for the noise filters built with ``perturb_bn_stats=True``
(the latent defense keeps the statistics before its split layer exactly, by design; the shadow
defense usually changes them but does not promise to). Equality is judged per entry (per
state-dict key): a single element keeps its value whenever its noise rounds to nothing, which is
chance for an honest defense (about ulp/sigma per element, ~1e-6 in float32, ~1e-3 in float16)
and would make a per-element rule block every real model of a million parameters.

Hypothesis draws a :class:`Recipe` per example; it is built and run once for each filter of a
family (Gaussian and Laplacian on a tiny conv-BN-linear state dict; shadow and latent on
``SmallCNN``), so one draw feeds two filters. Each family's filters come in several
configurations (``Recipe.variant`` picks one). The data-aware filters keep their real defense but
run it cheaply: 8×8 images in a ``.npz`` named by the job's ``gia_data.json`` (the documented
path), one image per round (the TMI 2023 high-risk site), one torch thread, ``steps=1`` and
``attacker_steps=1`` for the latent game, and most of their inputs invalid (10,000 defended
shadow and latent calls would not fit the CI budget). Counts reached by a run of this file with
the default 10,000 examples per filter (derandomized; repeated runs of the file reach the same):
defended / blocked / passed-through error replies = Gaussian 3748 / 6164 / 88, Laplacian
3143 / 6769 / 88, shadow 1466 / 8459 / 75, latent 1644 / 8281 / 75. The self-audited
``CalibratedDefenseFilter`` (on the data-aware world, with 2-iteration attacks per valid result)
gets a fifth of the examples (``EXAMPLES``): 214 / 1772 / 14 of 2,000. The last test
asserts the totals and a floor on the defended ones (``MIN_VALID``). The file took 198 s on two
idle cores (2026-12-06): 34 s for the noise filters, 82 s for shadow and latent, 79 s for the
calibrated filter.
``LeakageGateFilter`` is not fuzzed here: it is a check, not a defense (it passes an update it
does not block unchanged); its fail-closed cases are in ``test_audit_filters.py``.

Set ``GIA_FUZZ_EXAMPLES`` to run more (or fewer) examples per filter locally.

The regression tests at the end pin the inputs with which this fuzzing found each bug.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import inspect
import logging
import os
import re
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from nvflare_gia.data import DataSpec
from nvflare_gia.defenses._update import is_bn_running_stat
from nvflare_gia.flare.audit_filters import CalibratedDefenseFilter
from nvflare_gia.flare.filters import (
    GIA_DEFENSE_META_KEY,
    GaussianNoiseFilter,
    LaplacianNoiseFilter,
    LatentPerturbationFilter,
    ShadowModelFilter,
)

FUZZ_EXAMPLES = int(os.environ.get("GIA_FUZZ_EXAMPLES", "10000"))
#: Examples per filter: ``FUZZ_EXAMPLES``, and a fifth for the self-audited filter, which runs the
#: attack up to four times per defended result (calibration rungs and confirmations, about 0.3 s on
#: two cores): a fifth takes it about 80 s (all 10,000 took 344 s, a quarter of the suite's time).
EXAMPLES = {name: FUZZ_EXAMPLES for name in ("gaussian", "laplacian", "shadow", "latent")} | {"calibrated": max(1, FUZZ_EXAMPLES // 5)}
#: Floor on the defended results of a full run (10,000 examples, 2,000 for the calibrated filter;
#: reached: 3748, 3143, 1466, 1644, 214).
MIN_VALID = {"gaussian": 3000, "laplacian": 2500, "shadow": 1200, "latent": 1350, "calibrated": 180}

SITE = "site-1"
JOB_ID = "job-fuzz"
ROUND = 3
TASK_ID = "task-current"
IMAGE_SIZE = 8
COUNTER = "num_batches_tracked"

SEEN: collections.Counter[str] = collections.Counter()
VALID: collections.Counter[str] = collections.Counter()
BLOCKED: collections.Counter[str] = collections.Counter()
PASSED_THROUGH: collections.Counter[str] = collections.Counter()

FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example],
)


# ---------------------------------------------------------------------------------------- worlds


class World:
    """One filter under test, the global model it caches and a valid update and meta for it."""

    def __init__(self, name: str, filters: list, engine: Any, global_state: dict[str, np.ndarray],
                 update: dict[str, np.ndarray], meta: dict, data_aware: bool) -> None:
        self.name, self.filters, self.engine, self.data_aware = name, filters, engine, data_aware
        self.global_state, self.update, self.meta = global_state, update, meta

    def __repr__(self) -> str:  # keeps hypothesis' reports short
        return f"World({self.name!r})"


def _noise_state(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A tiny conv-BN-linear state dict (global model) and a plausible update for it."""
    shapes = {
        "conv.weight": (4, 1, 3, 3),
        "bn.weight": (4,),
        "bn.bias": (4,),
        "bn.running_mean": (4,),
        "bn.running_var": (4,),
        "fc.weight": (2, 4),
        "fc.bias": (2,),
    }
    global_state = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    global_state["bn.running_var"] = np.abs(global_state["bn.running_var"]) + 0.5
    global_state["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
    update = {k: (rng.normal(size=s) * 1e-3).astype(np.float32) for k, s in shapes.items()}
    update["bn.num_batches_tracked"] = np.array(1, dtype=np.int64)
    return global_state, update


@pytest.fixture(scope="module", autouse=True)
def _quiet_and_single_threaded():
    """One torch thread (shared cores) and no log handlers (each blocked call logs an error)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def noise_worlds(tmp_path_factory, site_workspace) -> dict[str, World]:
    engine, _ = site_workspace(tmp_path_factory.mktemp("noise_ws"), SITE, JOB_ID)
    global_state, update = _noise_state(np.random.default_rng(0))
    meta = {"NUM_STEPS_CURRENT_ROUND": 1}
    gaussian = [
        GaussianNoiseFilter(seed=0),
        GaussianNoiseFilter(sigma0=1e-3, percentile=100.0, perturb_bn_stats=False, seed=1),
        GaussianNoiseFilter(sigma0=2.0, percentile=1.0, calibration_samples=1000, seed=2),
    ]
    laplacian = [
        LaplacianNoiseFilter(seed=0),
        LaplacianNoiseFilter(b=1e-8, perturb_bn_stats=False, seed=1),
        LaplacianNoiseFilter(b=10.0, seed=2),
    ]
    return {
        "gaussian": World("gaussian", gaussian, engine, global_state, update, meta, False),
        "laplacian": World("laplacian", laplacian, engine, global_state, update, meta, False),
    }


@pytest.fixture(scope="module")
def data_worlds(tmp_path_factory, site_workspace, train_site_round) -> dict[str, World]:
    """SmallCNN on 8×8 images; site-1 of a TMI 2023 partition trains on one image, batch 1."""
    root = tmp_path_factory.mktemp("data_ws")
    engine, config_dir = site_workspace(root / "ws", SITE, JOB_ID)
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.random((n, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32), np.arange(n) % 2

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = split(12), split(4), split(2)
    npz = root / "tiny8.npz"
    np.savez(npz, train_images=train_x, train_labels=train_y, val_images=val_x, val_labels=val_y,
             test_images=test_x, test_labels=test_y)
    spec = DataSpec(source=str(npz), scheme="tmi2023", site_names=(SITE, "site-2"))
    (config_dir / "gia_data.json").write_text(spec.to_json())

    global_state, update, meta = train_site_round(spec, SITE, ROUND)
    shadow = [
        ShadowModelFilter(seed=0, num_threads=1),
        ShadowModelFilter(saliency="input_gradient", budget=0.1, mask_fraction=1.0, seed=1, num_threads=1),
    ]
    latent = [
        LatentPerturbationFilter(steps=1, attacker_steps=1, seed=0, num_threads=1),
        LatentPerturbationFilter(epsilon=0.05, steps=1, attacker_steps=1, split_layer="features.7", seed=1, num_threads=1),
    ]
    # The self-audit runs the real attack on every valid result (2 iterations on 8×8 images);
    # a target no strength can miss makes the weakest rung the one applied, the other forces a climb.
    calibrated = [
        CalibratedDefenseFilter(defense="gaussian", target=100.0, max_iterations=2, restarts=1, max_seconds=None, seed=0, num_threads=1),
        CalibratedDefenseFilter(defense="laplacian", target=100.0, metric="ssim", max_iterations=2, restarts=1, max_seconds=None, seed=1, num_threads=1),
    ]
    return {
        "shadow": World("shadow", shadow, engine, global_state, update, meta, True),
        "latent": World("latent", latent, engine, global_state, update, meta, True),
        "calibrated": World("calibrated", calibrated, engine, global_state, update, meta, True),
    }


# ---------------------------------------------------------------------------------------- inputs


def _weighted(options: dict[Any, int]) -> st.SearchStrategy:
    """``sampled_from`` with integer weights (the first option is what hypothesis shrinks toward)."""
    return st.sampled_from([option for option, weight in options.items() for _ in range(weight)])


ENVELOPES = _weighted({
    "dxo": 88,
    "plain": 2,  # a Shareable without a DXO: random keys, maybe arrays
    "bad_encoding": 3,  # content type DXO but the DXO entry is broken
    "collection": 2,  # a COLLECTION DXO holding a WEIGHT_DIFF DXO
    "bad_headers": 2,  # the headers entry is not a dict
    "not_shareable": 1,
    "weights_in_headers": 2,
})
KINDS = _weighted({
    DataKind.WEIGHT_DIFF: 50, DataKind.WEIGHTS: 36, DataKind.METRICS: 2, DataKind.COLLECTION: 1, DataKind.ANALYTIC: 1,
    DataKind.FL_MODEL: 2, DataKind.STATISTICS: 1, DataKind.PSI: 1, DataKind.APP_DEFINED: 2,
    "weight_diff": 1, None: 1, 7: 1,
})
RETURN_CODES = _weighted({
    ReturnCode.OK: 84, "<missing>": 4, ReturnCode.EXECUTION_EXCEPTION: 3, ReturnCode.TASK_ABORTED: 2,
    ReturnCode.EXECUTION_RESULT_ERROR: 2, ReturnCode.BAD_TASK_DATA: 1, ReturnCode.EARLY_TERMINATION: 1,
    ReturnCode.TASK_RESULT_FILTER_ERROR: 1, "ok": 1, None: 1,
})
PAYLOADS = _weighted({"full": 92, "empty": 4, "none": 2, "list": 2})
BASES = _weighted({"true": 55, "scaled": 20, "random": 20, "zeros": 5})
CONTAINERS = _weighted({"numpy": 50, "torch": 25, "mixed": 25})
DELIVERIES = _weighted({"deliver": 88, "none": 3, "other_task": 2, "no_task_id": 2, "start_run": 2, "bad_round": 1,
                        "weights_kind_mismatch": 2})
METAS = _weighted({"valid": 80, "no_training": 4, "none": 2, "bad_training": 10, "previous_defense": 4})
#: The data-aware filters cost milliseconds per defended result: fewer of their inputs are valid.
METAS_DATA_AWARE = _weighted({"valid": 62, "no_training": 8, "none": 4, "bad_training": 18, "previous_defense": 8})
MUTATIONS = _weighted({
    "nan": 3, "inf": 2, "ninf": 2, "huge": 4, "huge_one": 3, "tiny": 4, "subnormal": 4, "zero": 3,
    "f16": 5, "f64": 4, "bf16": 2, "i32": 3, "i64": 2, "u8": 2, "bool": 1, "c64": 1, "object": 1,
    "str": 1, "pyfloat": 1, "list": 1, "none": 1, "np_scalar": 1, "transpose": 2, "grow": 2, "empty": 1,
    "drop": 3, "rename": 2, "extra": 2, "int_key": 1, "torch": 3, "numpy": 2, "noncontig": 2, "readonly": 2,
    "requires_grad": 1, "dxo": 1, "negate": 2,
})
MUTATION_COUNTS = _weighted({0: 55, 1: 25, 2: 12, 3: 5, 4: 3})
MUTATION_COUNTS_DATA_AWARE = _weighted({0: 10, 1: 36, 2: 26, 3: 17, 4: 11})
#: Result headers besides the return code: the round (valid, missing, odd) and random extras.
HEADERS = _weighted({
    (("current_round", ROUND),): 88, (): 3, (("current_round", -1),): 2, (("current_round", "3"),): 1,
    (("current_round", True),): 1, (("current_round", 2**70),): 1, (("current_round", 3.0),): 1,
    (("current_round", ROUND), ("x", None), ("topic", "t")): 1, (("current_round", ROUND), ("__task_name__", 5)): 1,
    (("current_round", ROUND), ("gia", float("nan"))): 1,
})
BAD_TRAINING = [
    ("batch_size", 2), ("batch_size", 0), ("batch_size", "1"), ("num_images", 5), ("image_size", 16), ("model", "resnet18"),
    ("model", "vgg"), ("num_classes", 3), ("num_classes", 1), ("lr", -1.0), ("lr", float("nan")), ("momentum", 1.5),
    ("local_epochs", 2), ("optimizer", "adam"), ("optimizer", "lbfgs"), ("in_channels", 3), ("model", None),
    ("weight_decay", -0.1), ("seed", 5), ("__replace__", None), ("__replace__", [1, 2]), ("__replace__", "sgd"),
]
#: Changes to ``gia_training`` that still describe what the client did (the replay takes the same steps).
HARMLESS_TRAINING = [("batch_size", "1"), ("optimizer", "adam"), ("seed", 5)]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What hypothesis draws for one example; :func:`_build` turns it into a task result per filter."""

    variant: int  # which configuration of each filter
    envelope: str
    kind: Any
    rc: Any
    payload: str
    base: str
    scale_exp: int
    container: str
    delivery: str
    meta_mode: str
    seed: int
    mutations: tuple[tuple[int, str], ...]
    headers: tuple[tuple[str, Any], ...]


@st.composite
def recipes(draw, data_aware: bool) -> Recipe:
    """One generated task result (see the module docstring); about 14 draws, so hypothesis stays cheap."""
    variant = draw(st.integers(0, 5))
    envelope = draw(ENVELOPES)
    kind = draw(KINDS) if envelope in ("dxo", "bad_encoding", "not_shareable") else DataKind.WEIGHT_DIFF
    rc = draw(RETURN_CODES)
    payload = draw(PAYLOADS) if envelope in ("dxo", "bad_encoding") else "full"
    base = draw(BASES)
    scale_exp = draw(st.integers(-45, 35)) if base in ("scaled", "random") else 0
    container = draw(CONTAINERS)
    delivery = draw(DELIVERIES)
    meta_mode = draw(METAS_DATA_AWARE if data_aware else METAS)
    seed = draw(st.integers(0, 2**32 - 1))
    counts = MUTATION_COUNTS_DATA_AWARE if data_aware else MUTATION_COUNTS
    mutations = tuple((draw(st.integers(0, 63)), draw(MUTATIONS)) for _ in range(draw(counts)))
    headers = draw(HEADERS)
    recipe = Recipe(variant, envelope, kind, rc, payload, base, scale_exp, container, delivery, meta_mode, seed, mutations, headers)
    note(repr(recipe))
    return recipe


@dataclasses.dataclass
class Case:
    """One task result built for one filter, and what the oracle knows about it."""

    flt: Any
    shareable: Any
    rc_ok: bool
    kind: Any
    data: Any  # the DXO data as handed over (None when there is no DXO)
    pristine: dict[str, Any]  # copies of the values, to compare with the result and the input afterwards
    delivery: str
    has_global: bool
    must_block: list[str]

    def __repr__(self) -> str:  # what was generated is in the note() above the failure
        return f"Case(filter={type(self.flt).__name__}, kind={self.kind!r}, delivery={self.delivery!r}, must_block={self.must_block})"


def _to_torch(value: np.ndarray) -> Any:
    if value.dtype == object:
        return value
    return torch.from_numpy(np.array(value, copy=True))


def _mutate(kind: str, key: str, value: Any, rng: np.random.Generator, data: dict) -> None:
    """Apply one mutation to ``data[key]`` (whose current value is ``value``), in place of the dict."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casting NaN, 1e30 or complex values to integers or float16 is the point
        _mutate_quietly(kind, key, value, rng, data)


def _mutate_quietly(kind: str, key: str, value: Any, rng: np.random.Generator, data: dict) -> None:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) and value.dtype != torch.bfloat16 else value
    is_torch = isinstance(value, torch.Tensor)

    def put(new_array: np.ndarray) -> None:
        data[key] = _to_torch(new_array) if is_torch else new_array

    if not isinstance(array, np.ndarray):
        if kind in ("drop", "rename"):
            data.pop(key, None)
            if kind == "rename":
                data[f"{key}.renamed"] = value
        return
    a = np.array(array, copy=True)
    floating = a.dtype.kind == "f"
    if kind in ("nan", "inf", "ninf") and floating and a.size:
        a.flat[int(rng.integers(a.size))] = {"nan": np.nan, "inf": np.inf, "ninf": -np.inf}[kind]
        put(a)
    elif kind == "huge" and floating:
        put((np.sign(rng.normal(size=a.shape)) * 1e30).astype(a.dtype))
    elif kind == "huge_one" and floating and a.size:
        a.flat[int(rng.integers(a.size))] = 1e30
        put(a)
    elif kind == "tiny" and floating:
        put((a.astype(np.float64) * 1e-30 + rng.normal(size=a.shape) * 1e-30).astype(a.dtype))
    elif kind == "subnormal" and floating:
        tiny = np.finfo(a.dtype).smallest_subnormal
        put((rng.integers(-3, 4, size=a.shape) * tiny).astype(a.dtype))
    elif kind == "zero":
        put(np.zeros_like(a))
    elif kind == "negate" and floating:
        put(-a)
    elif kind in ("f16", "f64", "i32", "i64", "u8", "bool", "c64"):
        dtype = {"f16": np.float16, "f64": np.float64, "i32": np.int32, "i64": np.int64, "u8": np.uint8, "bool": np.bool_,
                 "c64": np.complex64}[kind]
        put(a.astype(dtype))
    elif kind == "bf16":
        data[key] = torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    elif kind == "object":
        data[key] = a.astype(object)
    elif kind == "str":
        data[key] = "0.5"
    elif kind == "pyfloat":
        data[key] = float(a.reshape(-1)[0]) if a.size else 0.0
    elif kind == "list":
        data[key] = a.tolist()
    elif kind == "none":
        data[key] = None
    elif kind == "np_scalar":
        data[key] = a.reshape(-1)[0] if a.size else np.float32(0)
    elif kind == "transpose" and a.ndim >= 1:
        put(a.reshape(-1) if a.ndim > 1 else a.reshape(-1, 1))
    elif kind == "grow":
        put(np.concatenate([a.reshape(-1), np.zeros(1, a.dtype)]))
    elif kind == "empty":
        put(np.zeros((0,), dtype=a.dtype))
    elif kind == "drop":
        data.pop(key, None)
    elif kind == "rename":
        data.pop(key, None)
        data[f"{key}.renamed"] = value
    elif kind == "extra":
        data[f"{key}.extra"] = rng.normal(size=3).astype(np.float32)
    elif kind == "int_key":
        data[len(data)] = rng.normal(size=2).astype(np.float32)
    elif kind == "torch":
        data[key] = _to_torch(a)
    elif kind == "numpy":
        data[key] = a
    elif kind == "noncontig" and a.ndim >= 1 and a.size > 1:
        wide = np.repeat(a[..., None], 2, axis=-1)
        view = wide[..., 0]
        data[key] = torch.from_numpy(wide)[..., 0] if is_torch else view
    elif kind == "readonly" and not is_torch:
        a.setflags(write=False)
        data[key] = a
    elif kind == "requires_grad" and floating and a.dtype != np.float16:
        data[key] = torch.from_numpy(a).requires_grad_(True)
    elif kind == "dxo":
        data[key] = DXO(DataKind.WEIGHT_DIFF, {key: a})


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    return copy.deepcopy(value) if not isinstance(value, DXO) else value


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return np.asarray(value)


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, np.generic, torch.Tensor))


def _dtype(value: Any) -> Any:
    return value.dtype if _is_array(value) else None


def _is_float(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype.kind == "f"


def _holds_arrays(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` holds an array, a tensor or a DXO anywhere (recursively)."""
    if depth > 8:
        return False
    if _is_array(obj) or isinstance(obj, DXO):
        return True
    if isinstance(obj, dict):
        return any(_holds_arrays(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_arrays(v, depth + 1) for v in obj)
    return False


def _entry_problem(value: Any) -> str | None:
    """Why an entry can never be defended (None if it might be)."""
    if not _is_array(value):
        return f"value of type {type(value).__name__}"
    dtype = value.dtype
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            return "complex"
        if value.is_floating_point() and not bool(torch.isfinite(value.detach().float()).all()):
            return "non-finite"
        return None
    if dtype.kind == "c":
        return "complex"
    if dtype.kind not in "biuf":
        return f"dtype {dtype}"
    if dtype.kind == "f" and not np.isfinite(value).all():
        return "non-finite"
    return None


def _filter_args(flt: Any) -> str:
    names = [n for n in inspect.signature(type(flt).__init__).parameters if n not in ("self", "data_spec")]
    return ", ".join(f"{n}={getattr(flt, n)!r}" for n in names)


def _build(world: World, recipe: Recipe) -> Case:
    """The task result ``recipe`` describes, for one of ``world``'s filters, and the oracle's verdict."""
    r = recipe
    flt = world.filters[r.variant % len(world.filters)]
    rng = np.random.default_rng(r.seed)
    must_block: list[str] = []

    # ---- the update's values
    data: dict[Any, Any] = {}
    for key, true in world.update.items():
        if true.dtype.kind != "f" or r.base == "true":
            value = np.array(true, copy=True)
        elif r.base == "scaled":
            value = (true.astype(np.float64) * 10.0**r.scale_exp).astype(true.dtype)
        elif r.base == "random":
            value = (rng.normal(size=true.shape) * 10.0**r.scale_exp).astype(true.dtype)
        else:
            value = np.zeros_like(true)
        if r.kind == DataKind.WEIGHTS:
            value = np.asarray(world.global_state[key].astype(np.float64) + value.astype(np.float64)).astype(true.dtype)
        if r.container == "torch" or (r.container == "mixed" and rng.random() < 0.5):
            value = torch.from_numpy(value)
        data[key] = value
    for index, mutation in r.mutations:
        present = list(data)
        if present:
            key = present[index % len(present)]
            _mutate(mutation, key, data[key], rng, data)

    # ---- the meta
    meta: Any = copy.deepcopy(world.meta)
    meta_harmless = r.meta_mode == "valid"
    if r.meta_mode == "no_training":
        meta.pop("gia_training", None)
    elif r.meta_mode == "none":
        meta = None
    elif r.meta_mode == "bad_training" and "gia_training" in meta:
        field, bad = BAD_TRAINING[int(rng.integers(len(BAD_TRAINING)))]
        meta_harmless = any((field, bad) == harmless for harmless in HARMLESS_TRAINING)
        if field == "__replace__":
            meta["gia_training"] = bad
        else:
            meta["gia_training"][field] = bad
    elif r.meta_mode == "previous_defense":
        meta[GIA_DEFENSE_META_KEY] = {"name": "GaussianNoise", "params": {}, "noise_norm": 1.0, "seconds": 0.0}

    # ---- the envelope
    pristine = {k: _snapshot(v) for k, v in data.items()}
    handed: Any = {"full": data, "empty": {}, "none": None, "list": list(data.values())}[r.payload]
    shareable: Any
    kind = r.kind
    if r.envelope == "dxo":
        try:
            shareable = DXO(r.kind, handed, meta=meta).to_shareable()
        except ValueError:  # FLARE refuses to build it (a list for a kind other than APP_DEFINED): encode it by hand
            shareable = Shareable()
            shareable.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
            shareable["DXO"] = {"kind": r.kind, "data": handed, "meta": meta}
    elif r.envelope == "plain":
        shareable = Shareable()
        if rng.random() < 0.7:
            shareable["weights"] = dict(data)
        shareable["note"] = "no DXO here"
    elif r.envelope == "bad_encoding":
        broken = [{"kind": r.kind, "data": handed, "meta": "meta"}, {"kind": r.kind, "data": handed, "meta": [meta]},
                  {"data": handed}, [r.kind, handed], {}]
        shareable = Shareable()
        shareable.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
        shareable["DXO"] = broken[int(rng.integers(len(broken)))]
    elif r.envelope == "collection":
        inner = DXO(DataKind.WEIGHT_DIFF, dict(data), meta=copy.deepcopy(meta) if isinstance(meta, dict) else None)
        shareable = DXO(DataKind.COLLECTION, {"model": inner}, meta={}).to_shareable()
        kind = DataKind.COLLECTION
    elif r.envelope == "bad_headers":
        shareable = DXO(DataKind.WEIGHT_DIFF, dict(data), meta=meta).to_shareable()
        shareable[ReservedHeaderKey.HEADERS] = ["not", "a", "dict"]
    elif r.envelope == "weights_in_headers":
        shareable = Shareable()
        shareable.set_header("stash", dict(data))
    else:
        shareable = {"DXO": {"kind": r.kind, "data": handed}}
    if isinstance(shareable, Shareable) and r.envelope != "bad_headers":
        if r.rc != "<missing>":
            shareable.set_return_code(r.rc)
        for header, header_value in r.headers:
            shareable.set_header(header, header_value)
    rc_ok = r.rc in (ReturnCode.OK, "<missing>") or r.envelope == "bad_headers"
    has_global = r.delivery in ("deliver", "no_task_id", "bad_round")

    # ---- the oracle: inputs that must be blocked whatever the filter does with them
    if not rc_ok and _holds_arrays(shareable):
        must_block.append("an error reply that carries arrays")
    if r.envelope != "dxo" and rc_ok:
        must_block.append(f"envelope {r.envelope}")
    if r.envelope == "not_shareable":
        must_block.append("not a Shareable")
    if rc_ok and r.envelope == "dxo":
        if kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            must_block.append(f"kind {kind!r}")
        if not isinstance(handed, dict) or not handed:
            must_block.append(f"payload {r.payload}")
        else:
            for key, value in handed.items():
                problem = _entry_problem(value) if isinstance(key, str) else "non-string key"
                if problem:
                    must_block.append(f"{key!r}: {problem}")
            if has_global or world.data_aware or kind == DataKind.WEIGHTS:
                if not has_global:
                    must_block.append("no cached global model")
                elif set(handed) != set(world.global_state):
                    must_block.append("keys differ from the global model")
                else:
                    for key, value in handed.items():
                        reference = world.global_state[key]
                        if _is_array(value) and tuple(value.shape) != tuple(reference.shape):
                            must_block.append(f"{key!r}: shape {tuple(value.shape)}")
                        if _is_array(value) and _is_float(reference) and not _is_float(value) and not key.endswith(COUNTER):
                            must_block.append(f"{key!r}: {value.dtype} where the global model is floating point")
            if r.delivery == "bad_round":
                must_block.append("negative round in the task data")
            if r.delivery == "other_task":
                must_block.append("the cached global model belongs to another task")
            if world.data_aware and not meta_harmless:
                must_block.append(f"meta {r.meta_mode}")
    note(f"{type(flt).__name__}({_filter_args(flt)}): must_block={must_block}")
    return Case(flt, shareable, rc_ok, kind, handed, pristine, r.delivery, has_global, must_block)


# ---------------------------------------------------------------------------------------- running and checking


def _context(world: World, task_id: str | None) -> FLContext:
    fl_ctx = world.engine.new_context()
    if task_id is not None:
        fl_ctx.set_prop(FLContextKey.TASK_ID, task_id, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    return fl_ctx


def _deliver(world: World, case: Case) -> FLContext:
    """Put the filter in the state ``case.delivery`` names and return the context of the result."""
    flt = case.flt
    delivered_task = "task-older" if case.delivery == "other_task" else TASK_ID
    fl_ctx = _context(world, delivered_task)
    task_data: Any = None
    if case.delivery != "none":
        task_data = DXO(DataKind.WEIGHTS, dict(world.global_state)).to_shareable()
        task_data.set_header(AppConstants.CURRENT_ROUND, -2 if case.delivery == "bad_round" else ROUND)
    if case.delivery == "weights_kind_mismatch":
        task_data = DXO(DataKind.WEIGHT_DIFF, dict(world.global_state)).to_shareable()
    fl_ctx.set_prop(FLContextKey.TASK_DATA, task_data, private=True, sticky=False)
    flt.handle_event(EventType.BEFORE_TASK_EXECUTION, fl_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, None, private=True, sticky=False)
    if case.delivery == "start_run":
        flt.handle_event(EventType.START_RUN, fl_ctx)
    return _context(world, None if case.delivery == "no_task_id" else TASK_ID)


def _noise_due(flt: Any, key: str) -> bool:
    """Whether a floating-point entry ``key`` must differ from the input after ``flt``."""
    if str(key).endswith(COUNTER):
        return False
    if is_bn_running_stat(key):
        return isinstance(flt, (GaussianNoiseFilter, LaplacianNoiseFilter)) and flt.perturb_bn_stats
    return True


def _check_outcome(world: World, case: Case) -> str:
    """Run the filter on the case and check the property; return 'blocked', 'passed' or 'defended'."""
    flt = case.flt
    fl_ctx = _deliver(world, case)
    originals = dict(case.data) if isinstance(case.data, dict) else {}
    try:
        out = flt.process(case.shareable, fl_ctx)
    except ContentBlockedException as exc:
        assert type(flt).__name__ in str(exc), str(exc)
        cause = exc.__cause__
        assert cause is None or isinstance(cause, (ValueError, TypeError)), (
            f"{type(flt).__name__} failed closed, but on an unplanned {type(cause).__name__}: {cause}")
        return "blocked"
    except Exception as exc:  # anything else still fails closed in FLARE, but the filter promises ContentBlockedException
        raise AssertionError(f"{type(flt).__name__} raised {type(exc).__name__} instead of ContentBlockedException: {exc}") from exc

    assert not case.must_block, f"{type(flt).__name__} let through an input it must block: {case.must_block}"
    if not case.rc_ok:
        assert out is case.shareable, "a non-OK result must pass through unchanged"
        assert not _holds_arrays(out), "a non-OK result passed through while carrying arrays (unfiltered weights)"
        assert set(out) <= {ReservedHeaderKey.HEADERS, "DXO"} and not (out.get("DXO") or {}).get("data"), sorted(out)
        return "passed"

    assert isinstance(out, Shareable), type(out)
    dxo = from_shareable(out)
    assert dxo.data_kind == case.kind, (dxo.data_kind, case.kind)
    assert dxo.data_kind in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)
    expected_keys = set(world.global_state) if case.has_global else set(case.pristine)
    assert set(dxo.data) == expected_keys, (sorted(map(str, dxo.data)), sorted(map(str, expected_keys)))
    record = dxo.get_meta_prop(GIA_DEFENSE_META_KEY)
    assert isinstance(record, dict) and record.get("name") and record["noise_norm"] > 0, record
    for key, defended in dxo.data.items():
        before = case.pristine[key]
        assert type(defended) is type(before) or (isinstance(defended, np.ndarray) and isinstance(before, np.generic)), (
            key, type(defended), type(before))
        assert _dtype(defended) == _dtype(before), (key, _dtype(defended), _dtype(before))
        assert tuple(defended.shape) == tuple(before.shape), (key, defended.shape, before.shape)
        out_array, in_array = _as_array(defended), _as_array(before)
        if _is_float(defended):
            assert np.isfinite(out_array).all(), f"{key}: non-finite values in the defended result"
        if not _is_float(before) or str(key).endswith(COUNTER):
            assert np.array_equal(out_array, in_array), f"{key}: integer entry or step counter changed"
        elif _noise_due(flt, key) and in_array.size:
            assert not np.array_equal(out_array, in_array), (
                f"{type(flt).__name__} returned entry {key!r} ({in_array.dtype}, {in_array.size} values) undefended")
    for key, original in originals.items():  # the filter must not write into the arrays it was given
        if _is_array(original):
            assert np.array_equal(_as_array(original), _as_array(case.pristine[key]), equal_nan=True), f"{key}: input written to"
    return "defended"


def _fuzz(world: World, recipe: Recipe) -> None:
    outcome = _check_outcome(world, _build(world, recipe))
    SEEN[world.name] += 1
    {"blocked": BLOCKED, "passed": PASSED_THROUGH, "defended": VALID}[outcome][world.name] += 1


# ---------------------------------------------------------------------------------------- the fuzz tests
# Each generated recipe is built and run once for each of the two filters of a family, so hypothesis
# draws once per pair (see the module docstring for the counts reached).


def test_noise_filters_block_or_defend_every_generated_result(noise_worlds):
    pair = (noise_worlds["gaussian"], noise_worlds["laplacian"])

    @FUZZ_SETTINGS
    @given(recipe=recipes(data_aware=False))
    def run(recipe):
        for world in pair:
            _fuzz(world, recipe)

    run()


def test_data_aware_filters_block_or_defend_every_generated_result(data_worlds):
    pair = (data_worlds["shadow"], data_worlds["latent"])

    @FUZZ_SETTINGS
    @given(recipe=recipes(data_aware=True))
    def run(recipe):
        for world in pair:
            _fuzz(world, recipe)

    run()


def test_calibrated_filter_blocks_or_defends_every_generated_result(data_worlds):
    world = data_worlds["calibrated"]

    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES["calibrated"])
    @given(recipe=recipes(data_aware=True))
    def run(recipe):
        _fuzz(world, recipe)

    run()


def test_every_filter_saw_its_share_of_examples():
    """Runs last (file order): each filter that was fuzzed saw its examples, enough of them defended."""
    ran = {name: count for name, count in SEEN.items() if count}
    if not ran:
        pytest.skip("no fuzz test ran in this session (deselected)")
    summary = {name: {"total": SEEN[name], "defended": VALID[name], "blocked": BLOCKED[name], "passed": PASSED_THROUGH[name]}
               for name in ran}
    print(f"fuzz examples per filter: {summary}")
    for name, count in ran.items():
        assert count >= EXAMPLES[name], f"{name}: {count} examples < {EXAMPLES[name]}"
        assert VALID[name] + BLOCKED[name] + PASSED_THROUGH[name] == count
        if FUZZ_EXAMPLES >= 10_000:  # every branch of the property was taken, and enough results were defended
            assert BLOCKED[name] > 0 and PASSED_THROUGH[name] > 0, summary[name]
            assert VALID[name] >= MIN_VALID[name], f"{name}: only {VALID[name]} defended results, expected >= {MIN_VALID[name]}"


# ---------------------------------------------------------------------------------------- regressions
# The inputs with which the fuzzing above found each bug, pinned as plain tests (a few milliseconds).


def _run_once(world: World, flt: Any, shareable: Shareable) -> Shareable:
    fl_ctx = _context(world, TASK_ID)
    task_data = DXO(DataKind.WEIGHTS, dict(world.global_state)).to_shareable()
    task_data.set_header(AppConstants.CURRENT_ROUND, ROUND)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, task_data, private=True, sticky=False)
    flt.handle_event(EventType.BEFORE_TASK_EXECUTION, fl_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, None, private=True, sticky=False)
    return flt.process(shareable, fl_ctx)


def _error_reply_with_plain_weights(update: dict) -> Shareable:
    reply = Shareable()
    reply["weights"] = dict(update)
    return reply


def _error_reply_with_broken_dxo(update: dict) -> Shareable:
    reply = Shareable()
    reply.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
    reply["DXO"] = {"kind": DataKind.WEIGHT_DIFF, "data": dict(update), "meta": "not a dict"}  # from_shareable raises
    return reply


def _error_reply_with_weights_in_a_header(update: dict) -> Shareable:
    reply = Shareable()
    reply.set_header("stash", dict(update))
    return reply


@pytest.mark.parametrize("name", ["gaussian", "laplacian"])
@pytest.mark.parametrize("make", [_error_reply_with_plain_weights, _error_reply_with_broken_dxo, _error_reply_with_weights_in_a_header])
def test_error_reply_that_carries_weights_outside_a_dxo_is_blocked(noise_worlds, name, make):
    """Was: any result with a return code other than OK and no parsable DXO passed through, weights and all."""
    world = noise_worlds[name]
    reply = make(world.update)
    reply.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    with pytest.raises(ContentBlockedException, match="error reply .* must not carry data"):
        _run_once(world, world.filters[0], reply)


def _with_entry(update: dict, key: str, value: np.ndarray) -> dict:
    return {**{k: np.array(v, copy=True) for k, v in update.items()}, key: value}


def test_gaussian_filter_blocks_an_entry_its_noise_cannot_change(noise_worlds):
    """Was: with the calibration percentile set by the small entries, an entry of ±1e30 went out unchanged."""
    world = noise_worlds["gaussian"]
    huge = (np.sign(np.random.default_rng(0).normal(size=(4, 1, 3, 3))) * 1e30).astype(np.float32)
    shareable = DXO(DataKind.WEIGHT_DIFF, _with_entry(world.update, "conv.weight", huge)).to_shareable()
    with pytest.raises(ContentBlockedException, match=r"update\['conv.weight'\] \(float32\) came out unchanged"):
        _run_once(world, GaussianNoiseFilter(sigma0=2.0, percentile=1.0, seed=2), shareable)


def test_laplacian_filter_blocks_batchnorm_statistics_its_noise_cannot_change(noise_worlds):
    """Was: a running_var delta of 1e4 (inputs far from unit scale) went out unchanged under the default b=1e-4."""
    world = noise_worlds["laplacian"]
    update = _with_entry(world.update, "bn.running_var", np.array([1.1e4, -2.3e4, 3.7e4, 5.3e4], dtype=np.float32))
    with pytest.raises(ContentBlockedException, match=r"update\['bn.running_var'\] \(float32\) came out unchanged"):
        _run_once(world, LaplacianNoiseFilter(seed=0), DXO(DataKind.WEIGHT_DIFF, update).to_shareable())


def test_gaussian_filter_blocks_a_subnormal_update(noise_worlds):
    """Was: an update of subnormal float32 values got noise of a subnormal sigma, which rounds to zero: sent as is."""
    world = noise_worlds["gaussian"]
    tiny = np.finfo(np.float32).smallest_subnormal
    update = {k: (np.sign(v) * tiny).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in world.update.items()}
    with pytest.raises(ContentBlockedException, match="came out unchanged"):
        _run_once(world, GaussianNoiseFilter(seed=0), DXO(DataKind.WEIGHT_DIFF, update).to_shareable())


def test_laplacian_filter_blocks_float16_weights_its_noise_cannot_change(noise_worlds):
    """Was: float16 WEIGHTS near 1 (BatchNorm scales) have a resolution of 1e-3; noise of b=1e-4 left them unchanged."""
    world = noise_worlds["laplacian"]
    weights = {k: (world.global_state[k] + v).astype(np.float16) if v.dtype.kind == "f" else world.global_state[k] + v
               for k, v in world.update.items()}
    weights["bn.weight"] = np.ones(4, dtype=np.float16)
    with pytest.raises(ContentBlockedException, match=r"update\['bn.weight'\] \(float16\) came out unchanged"):
        _run_once(world, LaplacianNoiseFilter(seed=0), DXO(DataKind.WEIGHTS, weights).to_shareable())


@pytest.mark.parametrize("name", ["gaussian", "laplacian", "shadow", "latent"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_integer_entry_where_the_global_model_is_float_is_blocked(noise_worlds, data_worlds, name, dtype):
    """Was: an integer (e.g. quantized) entry at a floating-point key got no noise and went out as it came."""
    world = {**noise_worlds, **data_worlds}[name]
    key = next(k for k, v in world.update.items() if v.dtype.kind == "f" and not is_bn_running_stat(k))
    update = _with_entry(world.update, key, (world.update[key] * 1e4).astype(dtype))
    shareable = DXO(DataKind.WEIGHT_DIFF, update, meta=copy.deepcopy(world.meta)).to_shareable()
    with pytest.raises(ContentBlockedException, match=rf"update\['{re.escape(key)}'\] has dtype {np.dtype(dtype)} where the global"):
        _run_once(world, world.filters[0], shareable)


@pytest.mark.parametrize("scale", [1e-20, 1e25])
def test_noise_filters_record_a_finite_positive_noise_norm_for_tiny_and_huge_updates(noise_worlds, scale):
    """Was: the float32 sum of squares of the noise underflowed to 0.0 (updates ~1e-23) or overflowed to inf (~1e22)."""
    world = noise_worlds["gaussian"]
    update = {k: (v.astype(np.float64) * scale).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in world.update.items()}
    out = from_shareable(_run_once(world, GaussianNoiseFilter(seed=0), DXO(DataKind.WEIGHT_DIFF, update).to_shareable()))
    record = out.get_meta_prop(GIA_DEFENSE_META_KEY)
    sigma = record["params"]["sigma"]
    noised = sum(v.size for k, v in update.items() if v.dtype.kind == "f")
    assert 0.5 < record["noise_norm"] / (sigma * np.sqrt(noised)) < 1.5, record


def test_calibrated_filter_blocks_an_update_whose_meta_claims_other_local_epochs(data_worlds):
    """Was: meta saying 2 local epochs for a 1-step update was self-audited as a 2-step round and sent."""
    world = data_worlds["calibrated"]
    meta = copy.deepcopy(world.meta)
    meta["gia_training"]["local_epochs"] = 2
    shareable = DXO(DataKind.WEIGHT_DIFF, dict(world.update), meta=meta).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, ROUND)
    with pytest.raises(ContentBlockedException, match="CalibratedDefenseFilter"):
        _run_once(world, world.filters[0], shareable)
