"""FLARE task-result filters that apply :mod:`nvflare_gia.defenses` to a client's update, failing closed.

Configure them on the clients under ``task_result_filters`` for the training task only, e.g.::

    {"tasks": ["train"], "filters": [{"path": "nvflare_gia.flare.filters.GaussianNoiseFilter", "args": {}}]}

Each filter

* accepts ``WEIGHT_DIFF`` and ``WEIGHTS`` DXOs (a ``WEIGHTS`` result is turned into a difference
  with the cached global model, defended, and turned back);
* caches the global model the client received at ``EventType.BEFORE_TASK_EXECUTION`` (FLARE has
  already cleared ``FLContextKey.TASK_DATA`` when result filters run) and forgets everything at
  ``EventType.START_RUN``;
* for the data-aware defenses, loads the site's own training data through the job's
  ``gia_data.json`` (:class:`nvflare_gia.data.DataSpec`, read from the app's config folder) and
  the client's training hyperparameters from ``meta["gia_training"]``;
* records ``meta["gia_defense"] = {"name", "params", "noise_norm", "seconds"}``;
* fails closed: on any problem (a result that is not a ``WEIGHTS``/``WEIGHT_DIFF`` DXO, NaN/Inf,
  shapes that differ from the cached global model, an integer or bool entry where the global model
  holds floating-point values, a missing global model or site data, an exception inside the
  defense, an entry the defense must change that comes out unchanged because the noise is below
  the resolution of its values) it raises ``ContentBlockedException``, so FLARE replies
  ``TASK_RESULT_FILTER_ERROR`` and no undefended update leaves the site. It never returns the
  undefended update and never returns None. Error replies (return code not OK) pass through only
  when they carry nothing but headers (or a DXO without data); one that carries anything else
  (a DXO with data, arrays in another entry or in its headers) is blocked, since FLARE's own
  ``DXOFilter`` would pass it on unfiltered.

Arguments are validated at construction (through the core ``*Config``), so a bad job
configuration fails at deployment. The core defense is built once per filter and owns its random
stream; with ``seed`` left at None every round draws fresh OS entropy.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from nvflare_gia.data import SiteData, load_site_data, load_splits
from nvflare_gia.defenses import (
    DefenseContext,
    GaussianNoise,
    GaussianNoiseConfig,
    LaplacianNoise,
    LaplacianNoiseConfig,
    LatentPerturbation,
    LatentPerturbationConfig,
    ShadowModelConfig,
    ShadowModelDefense,
)
from nvflare_gia.defenses._update import (
    copy_value,
    is_bn_running_stat,
    is_floating,
    is_perturbable,
    restore_like,
    to_numpy,
    validate_update,
)
from nvflare_gia.defenses.base import Defense
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.flare.client_train import DEFAULT_DATA_SPEC_FILE, resolve_data_spec

__all__ = [
    "GIA_DEFENSE_META_KEY",
    "DefenseFilter",
    "GaussianNoiseFilter",
    "LaplacianNoiseFilter",
    "ShadowModelFilter",
    "LatentPerturbationFilter",
]

#: DXO meta key under which a filter records what it applied.
GIA_DEFENSE_META_KEY = "gia_defense"

_SUPPORTED_KINDS = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
_DXO_KEY = "DXO"  # where DXO.to_shareable stores the DXO


def _check_data_spec(owner: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{owner}: data_spec must be a file name in the app's config folder, a path or JSON text, got {value!r}.")


class DefenseFilter(DXOFilter):
    """Common base of the defense filters: global-model cache, site data, fail-closed processing.

    Subclasses implement :meth:`_build_defense` (called once, at construction) and set
    ``_needs_data`` when the defense needs the site's data; those whose self-audit draws its prior
    from the data spec's validation split override :meth:`_needs_val_images`.

    Args:
        data_spec: for data-aware filters, the job's ``DataSpec``: a file in the app's config
            folder (default ``gia_data.json``), an absolute path, or JSON text; None otherwise.
    """

    _needs_data = False

    def __init__(self, data_spec: str | None = None) -> None:
        super().__init__(supported_data_kinds=list(_SUPPORTED_KINDS), data_kinds_to_filter=list(_SUPPORTED_KINDS))
        if self._needs_data:
            _check_data_spec(type(self).__name__, data_spec)
        self._defense: Defense = self._build_defense()
        self._reset()

    @abc.abstractmethod
    def _build_defense(self) -> Defense:
        """The core defense this filter applies (built once, at construction)."""

    def _needs_val_images(self) -> bool:
        """Whether the context must carry the validation split (the public images of an audit's prior)."""
        return False

    def _reset(self) -> None:
        self._global_state: dict[str, np.ndarray] | None = None
        self._global_problem = "no task data was seen (EventType.BEFORE_TASK_EXECUTION did not fire for this task)"
        self._global_task_id: Any = None
        self._global_round: int | None = None
        self._site_data: SiteData | None = None
        self._val_images: np.ndarray | None = None

    # ------------------------------------------------------------------ events

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Reset at ``START_RUN``; cache the received global model at ``BEFORE_TASK_EXECUTION``."""
        if event_type == EventType.START_RUN:
            self._reset()
            if getattr(self._defense.config, "seed", None) is not None:
                self.log_warning(
                    fl_ctx,
                    f"{type(self).__name__}: seed is fixed in the job configuration, which the server knows; it could "
                    "regenerate the noise. Use seed=None outside tests and benchmarks.",
                )
        elif event_type == EventType.BEFORE_TASK_EXECUTION:
            self._cache_global_model(fl_ctx)
        super().handle_event(event_type, fl_ctx)

    def _cache_global_model(self, fl_ctx: FLContext) -> None:
        self._global_state = None
        self._global_task_id = fl_ctx.get_prop(FLContextKey.TASK_ID)
        self._global_round = None
        task_data = fl_ctx.get_prop(FLContextKey.TASK_DATA)
        if not isinstance(task_data, Shareable):
            self._global_problem = f"the task data is not a Shareable ({type(task_data).__name__})"
            return
        current_round = task_data.get_header(AppConstants.CURRENT_ROUND)
        self._global_round = int(current_round) if isinstance(current_round, (int, np.integer)) else None
        try:
            dxo = from_shareable(task_data)
        except ValueError as exc:
            self._global_problem = f"the task data is not a DXO ({exc})"
            return
        if dxo.data_kind != DataKind.WEIGHTS or not isinstance(dxo.data, Mapping) or not dxo.data:
            self._global_problem = f"the task data is a {dxo.data_kind!r} DXO, not the global model's WEIGHTS"
            return
        state: dict[str, np.ndarray] = {}
        for key, value in dxo.data.items():
            if not isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
                self._global_problem = (
                    f"global model entry {key!r} is a {type(value).__name__}, not an array (run the executor in process "
                    "so that result filters see materialised tensors)"
                )
                return
            state[key] = np.array(to_numpy(value), copy=True)
        self._global_state = state
        self._global_problem = ""
        self.log_debug(fl_ctx, f"cached the global model ({len(state)} entries) for task {self._global_task_id}")

    # ------------------------------------------------------------------ processing

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Defend the update in ``shareable`` or raise ``ContentBlockedException`` (never fail open).

        Raises:
            ContentBlockedException: for any problem; the message says what went wrong.
        """
        try:
            return self._process(shareable, fl_ctx)
        except ContentBlockedException:
            raise
        except Exception as exc:  # fail closed: whatever went wrong, nothing unprotected leaves the site
            message = f"{type(self).__name__}: blocked the task result: {exc}"
            self.log_error(fl_ctx, message)
            raise ContentBlockedException(message) from exc

    def _process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        owner = type(self).__name__
        if not isinstance(shareable, Shareable):
            raise TypeError(f"{owner}: the task result must be a Shareable, got {type(shareable).__name__}.")
        rc = shareable.get_return_code()
        if rc != ReturnCode.OK:
            carried = _error_reply_payload(shareable)
            if carried:
                raise DataError(f"{owner}: an error reply (return code {rc!r}) must not carry data, got {carried}.")
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError as exc:
            raise DataError(
                f"{owner}: the task result must be a WEIGHTS or WEIGHT_DIFF DXO, got a shareable without a DXO ({exc}); "
                "configure this filter for the training task only."
            ) from exc
        if dxo.data_kind not in _SUPPORTED_KINDS:
            raise DataError(
                f"{owner}: the task result must be a WEIGHTS or WEIGHT_DIFF DXO, got {dxo.data_kind!r}; "
                "configure this filter for the training task only."
            )
        if not isinstance(dxo.data, Mapping) or not dxo.data:
            raise DataError(f"{owner}: the task result's DXO must hold a non-empty mapping of arrays, got {dxo.data!r:.80}.")
        stray = _arrays_outside_the_dxo(shareable)
        if stray:
            raise DataError(f"{owner}: the task result carries {stray} outside its DXO, which no filter defends; send the update in the DXO only.")
        result = self._apply_filter(dxo, shareable, fl_ctx)
        return result.update_shareable(shareable)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        """Apply the defense to ``dxo`` in place and return it (``process`` has checked its kind)."""
        owner = type(self).__name__
        started = time.perf_counter()
        global_state = self._global_for(fl_ctx, required=dxo.data_kind == DataKind.WEIGHTS or self._defense.requires_global_state)
        data = dxo.data
        if dxo.data_kind == DataKind.WEIGHTS:
            validate_update(data, global_state, owner=owner)
        stand_ins = _non_float_stand_ins(data, global_state)
        if stand_ins:
            raise DataError(f"{owner}: the update does not fit the global model: " + "; ".join(stand_ins) + ".")
        if dxo.data_kind == DataKind.WEIGHTS:
            update = {k: _subtract(v, global_state[k]) for k, v in data.items()}
        else:
            update = data  # the defense validates it (against the cached global model when there is one)
        if self._needs_data and dxo.get_meta_prop(GIA_DEFENSE_META_KEY) is not None:
            raise DataError(
                f"{owner}: must be the first defense of the chain (it replays local training from the received update), "
                f"but {dxo.get_meta_prop(GIA_DEFENSE_META_KEY).get('name')!r} already ran."
            )
        context = self._context(dxo, shareable, fl_ctx)
        outcome = self._defense.apply(update, global_state=global_state, context=context)
        validate_update(outcome.update, data, owner=f"{owner} (defended result)")
        if set(outcome.update) != set(data):
            raise DataError(f"{owner}: the defense changed the keys of the update.")
        if dxo.data_kind == DataKind.WEIGHTS:
            new_data = {
                k: _add(global_state[k], outcome.update[k], v) if is_perturbable(k, v) else copy_value(v) for k, v in data.items()
            }
            validate_update(new_data, data, owner=f"{owner} (defended weights)")
        else:
            new_data = outcome.update
        undefended = self._undefended(data, new_data, global_state)
        if undefended:
            raise DataError(f"{owner}: the defense did not change every entry it must protect: " + "; ".join(undefended) + ".")
        record = {
            "name": self._defense.name,
            "params": outcome.params,
            "noise_norm": float(outcome.noise_norm),
            "seconds": float(time.perf_counter() - started),
        }
        previous = dxo.get_meta_prop(GIA_DEFENSE_META_KEY)
        if previous is not None:
            record["previous"] = previous
        dxo.data = new_data
        dxo.set_meta_prop(GIA_DEFENSE_META_KEY, record)
        self.log_info(
            fl_ctx,
            f"{self._defense.name}: defended {len(new_data)} entries in {record['seconds']:.3f} s, noise norm {record['noise_norm']:.4g}",
        )
        return dxo

    # ------------------------------------------------------------------ helpers

    def _noise_due(self, key: str, reference: Any) -> bool:
        """Whether entry ``key`` (of the global model's kind ``reference``) must come out changed.

        Floating-point entries except step counters; BatchNorm running statistics only where the
        defense promises to change them (the latent defense keeps those before its split layer).
        """
        return is_perturbable(key, reference) and not is_bn_running_stat(key)

    def _undefended(self, data: Mapping, new_data: Mapping, global_state: Mapping | None) -> list[str]:
        """Entries where noise is due that the defense left exactly as they were (noise below the
        resolution of the entry's values, e.g. 1e30 next to updates of 1e-3, or subnormal values)."""
        found = []
        for key, before in data.items():
            reference = global_state[key] if global_state is not None and key in global_state else before
            if not self._noise_due(key, reference):
                continue
            before_array = to_numpy(before)
            if before_array.size and np.array_equal(before_array, to_numpy(new_data[key])):
                found.append(f"update[{key!r}] ({before.dtype}) came out unchanged: the noise is below the resolution of its values")
        return found

    def _global_for(self, fl_ctx: FLContext, required: bool) -> dict[str, np.ndarray] | None:
        owner = type(self).__name__
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID)
        if self._global_state is not None and task_id is not None and self._global_task_id is not None and task_id != self._global_task_id:
            raise DataError(
                f"{owner}: the cached global model belongs to task {self._global_task_id!r}, but the result is for task {task_id!r}."
            )
        if self._global_state is None and required:
            raise DataError(
                f"{owner}: the global model the client trained from is required but was not cached: {self._global_problem}."
            )
        return self._global_state

    def _round(self, shareable: Shareable) -> int | None:
        if self._global_round is not None:
            return self._global_round
        value = shareable.get_header(AppConstants.CURRENT_ROUND)
        return int(value) if isinstance(value, (int, np.integer)) and value >= 0 else None

    def _context(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DefenseContext:
        round_index = self._round(shareable)
        if not self._needs_data:
            return DefenseContext(round_index=round_index)
        site = self._load_site_data(fl_ctx)
        context = DefenseContext.from_training_meta(
            dxo.meta or {}, images=site.train_images, labels=site.train_labels, round_index=round_index,
            val_images=self._val_images if self._needs_val_images() else None,
        )
        if context.batch_size != site.batch_size:
            raise DataError(
                f"{type(self).__name__}: the client reported batch_size={context.batch_size} but the data spec gives site "
                f"{site.name!r} batch_size={site.batch_size}."
            )
        return context

    def _load_site_data(self, fl_ctx: FLContext) -> SiteData:
        if self._site_data is None:
            owner = type(self).__name__
            site_name = fl_ctx.get_identity_name()
            engine = fl_ctx.get_engine()
            if engine is None:
                raise DataError(f"{owner}: the FL context has no engine, so the app's config folder cannot be found.")
            config_dir = engine.get_workspace().get_app_config_dir(fl_ctx.get_job_id())
            try:
                spec = resolve_data_spec(self.data_spec, config_dir)
            except ConfigError as exc:
                raise DataError(f"{owner}: cannot read the job's data spec: {exc}") from exc
            self._site_data = load_site_data(spec, site_name)
            if self._needs_val_images():  # the whole split, as the server's widget loads it
                self._val_images = load_splits(spec).val_images
        return self._site_data


def _is_bool(value: Any) -> bool:
    return value.dtype == torch.bool if isinstance(value, torch.Tensor) else np.asarray(value).dtype == np.bool_


def _non_float_stand_ins(data: Mapping, global_state: Mapping | None) -> list[str]:
    """Integer or bool arrays standing in for floating-point entries of the global model (no defense
    adds noise to them, so they would leave the site as they are), and bool arrays standing in for
    numbers (step counters)."""
    if global_state is None:
        return []
    return [
        f"update[{key!r}] has dtype {value.dtype} where the global model has {global_state[key].dtype} "
        "(no defense adds noise to integer or bool entries)"
        for key, value in data.items()
        if key in global_state
        and isinstance(value, (np.ndarray, np.generic, torch.Tensor))
        and (
            (is_perturbable(key, global_state[key]) and not is_floating(value))
            or (_is_bool(value) and not _is_bool(global_state[key]))
        )
    ]


def _holds_arrays(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds an array or tensor anywhere (nested dicts, lists and tuples, 8 levels)."""
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor, DXO)):
        return True
    if depth < 8 and isinstance(value, Mapping):
        return any(_holds_arrays(v, depth + 1) for v in value.values())
    if depth < 8 and isinstance(value, (list, tuple)):
        return any(_holds_arrays(v, depth + 1) for v in value)
    return False


def _error_reply_payload(shareable: Shareable) -> str:
    """What an error reply carries besides its headers and an empty DXO ("" for nothing).

    FLARE's own ``DXOFilter`` passes every reply whose return code is not OK through unfiltered, so
    an error reply that still holds an update (a DXO with data, arrays under another key or in the
    headers) would leave the site undefended.
    """
    carried = []
    for key, value in shareable.items():
        if key == ReservedHeaderKey.HEADERS:
            if _holds_arrays(value):
                carried.append("arrays in its headers")
        elif key == _DXO_KEY and isinstance(value, Mapping) and not value.get("data") and not _holds_arrays(value):
            continue
        else:
            carried.append(f"entry {key!r}")
    return ", ".join(carried)


def _arrays_outside_the_dxo(shareable: Shareable) -> str:
    """Where a successful result holds arrays besides its DXO ("" for nowhere): its headers or other entries.

    The filter defends the DXO only, so an update stashed elsewhere would leave the site undefended.
    """
    carried = []
    for key, value in shareable.items():
        if key != _DXO_KEY and _holds_arrays(value):
            carried.append("arrays in its headers" if key == ReservedHeaderKey.HEADERS else f"arrays under entry {key!r}")
    return ", ".join(carried)


def _subtract(weights: Any, global_value: np.ndarray) -> Any:
    """``weights - global_value`` in the container, dtype and device of ``weights`` (integers included)."""
    if isinstance(weights, torch.Tensor):
        return weights.detach() - torch.as_tensor(global_value).to(device=weights.device, dtype=weights.dtype)
    array = np.asarray(weights)
    return array - np.asarray(global_value).astype(array.dtype, copy=False)


def _add(global_value: np.ndarray, diff: Any, like: Any) -> Any:
    """``global_value + diff`` in the container, dtype and device of ``like``."""
    if isinstance(like, torch.Tensor):
        base = torch.as_tensor(global_value).to(device=like.device, dtype=like.dtype)
        return restore_like(base + restore_like(diff, like), like)
    array = np.asarray(like)
    return restore_like(np.asarray(global_value).astype(array.dtype, copy=False) + restore_like(diff, array), array)


class GaussianNoiseFilter(DefenseFilter):
    """Result filter applying :class:`nvflare_gia.defenses.GaussianNoise` (TMI 2023).

    Args:
        sigma0: see :class:`nvflare_gia.defenses.GaussianNoiseConfig`.
        percentile: see :class:`nvflare_gia.defenses.GaussianNoiseConfig`.
        perturb_bn_stats: see :class:`nvflare_gia.defenses.GaussianNoiseConfig`.
        calibration_samples: see :class:`nvflare_gia.defenses.GaussianNoiseConfig`.
        seed: see :class:`nvflare_gia.defenses.GaussianNoiseConfig` (leave None in production).

    Raises:
        TypeError, ConfigError: for invalid arguments (at construction, i.e. at deployment).
    """

    def __init__(
        self,
        sigma0: float = GaussianNoiseConfig.sigma0,
        percentile: float = GaussianNoiseConfig.percentile,
        perturb_bn_stats: bool = GaussianNoiseConfig.perturb_bn_stats,
        calibration_samples: int | None = GaussianNoiseConfig.calibration_samples,
        seed: int | None = GaussianNoiseConfig.seed,
    ) -> None:
        self.sigma0 = sigma0
        self.percentile = percentile
        self.perturb_bn_stats = perturb_bn_stats
        self.calibration_samples = calibration_samples
        self.seed = seed
        super().__init__()

    def _noise_due(self, key: str, reference: Any) -> bool:
        return is_perturbable(key, reference) and (self.perturb_bn_stats or not is_bn_running_stat(key))

    def _build_defense(self) -> Defense:
        return GaussianNoise(
            GaussianNoiseConfig(
                sigma0=self.sigma0,
                percentile=self.percentile,
                perturb_bn_stats=self.perturb_bn_stats,
                calibration_samples=self.calibration_samples,
                seed=self.seed,
            )
        )


class LaplacianNoiseFilter(DefenseFilter):
    """Result filter applying :class:`nvflare_gia.defenses.LaplacianNoise` (MedPFL).

    Args:
        b: see :class:`nvflare_gia.defenses.LaplacianNoiseConfig`.
        perturb_bn_stats: see :class:`nvflare_gia.defenses.LaplacianNoiseConfig`.
        seed: see :class:`nvflare_gia.defenses.LaplacianNoiseConfig` (leave None in production).

    Raises:
        TypeError, ConfigError: for invalid arguments.
    """

    def __init__(
        self,
        b: float = LaplacianNoiseConfig.b,
        perturb_bn_stats: bool = LaplacianNoiseConfig.perturb_bn_stats,
        seed: int | None = LaplacianNoiseConfig.seed,
    ) -> None:
        self.b = b
        self.perturb_bn_stats = perturb_bn_stats
        self.seed = seed
        super().__init__()

    def _noise_due(self, key: str, reference: Any) -> bool:
        return is_perturbable(key, reference) and (self.perturb_bn_stats or not is_bn_running_stat(key))

    def _build_defense(self) -> Defense:
        return LaplacianNoise(LaplacianNoiseConfig(b=self.b, perturb_bn_stats=self.perturb_bn_stats, seed=self.seed))


class ShadowModelFilter(DefenseFilter):
    """Result filter applying :class:`nvflare_gia.defenses.ShadowModelDefense`; must be the first defense.

    Needs ``meta["gia_training"]`` (written by ``nvflare_gia.flare.client_train``) and the job's
    data spec, to replay the client's round on its own data.

    Args:
        budget: see :class:`nvflare_gia.defenses.ShadowModelConfig`.
        mask_fraction: see :class:`nvflare_gia.defenses.ShadowModelConfig`.
        saliency: see :class:`nvflare_gia.defenses.ShadowModelConfig`.
        noise_std: see :class:`nvflare_gia.defenses.ShadowModelConfig`.
        target_layer: see :class:`nvflare_gia.defenses.ShadowModelConfig`.
        seed: see :class:`nvflare_gia.defenses.ShadowModelConfig` (leave None in production).
        num_threads: see :class:`nvflare_gia.defenses.ShadowModelConfig`.
        data_spec: the job's ``DataSpec`` file in the app's config folder (or a path or JSON text).

    Raises:
        TypeError, ConfigError: for invalid arguments.
    """

    _needs_data = True

    def __init__(
        self,
        budget: float = ShadowModelConfig.budget,
        mask_fraction: float = ShadowModelConfig.mask_fraction,
        saliency: str = ShadowModelConfig.saliency,
        noise_std: float = ShadowModelConfig.noise_std,
        target_layer: str | None = ShadowModelConfig.target_layer,
        seed: int | None = ShadowModelConfig.seed,
        num_threads: int | None = ShadowModelConfig.num_threads,
        data_spec: str = DEFAULT_DATA_SPEC_FILE,
    ) -> None:
        self.budget = budget
        self.mask_fraction = mask_fraction
        self.saliency = saliency
        self.noise_std = noise_std
        self.target_layer = target_layer
        self.seed = seed
        self.num_threads = num_threads
        self.data_spec = data_spec
        super().__init__(data_spec)

    def _build_defense(self) -> Defense:
        return ShadowModelDefense(
            ShadowModelConfig(
                budget=self.budget,
                mask_fraction=self.mask_fraction,
                saliency=self.saliency,
                noise_std=self.noise_std,
                target_layer=self.target_layer,
                seed=self.seed,
                num_threads=self.num_threads,
            )
        )


class LatentPerturbationFilter(DefenseFilter):
    """Result filter applying :class:`nvflare_gia.defenses.LatentPerturbation`; must be the first defense.

    Needs ``meta["gia_training"]`` and the job's data spec, like :class:`ShadowModelFilter`.

    Args:
        epsilon: see :class:`nvflare_gia.defenses.LatentPerturbationConfig`.
        task_loss_bound: see :class:`nvflare_gia.defenses.LatentPerturbationConfig`.
        steps: see :class:`nvflare_gia.defenses.LatentPerturbationConfig`.
        attacker_steps: see :class:`nvflare_gia.defenses.LatentPerturbationConfig`.
        split_layer: see :class:`nvflare_gia.defenses.LatentPerturbationConfig`.
        seed: see :class:`nvflare_gia.defenses.LatentPerturbationConfig` (leave None in production).
        num_threads: see :class:`nvflare_gia.defenses.LatentPerturbationConfig`.
        data_spec: the job's ``DataSpec`` file in the app's config folder (or a path or JSON text).

    Raises:
        TypeError, ConfigError: for invalid arguments.
    """

    _needs_data = True

    def __init__(
        self,
        epsilon: float = LatentPerturbationConfig.epsilon,
        task_loss_bound: float = LatentPerturbationConfig.task_loss_bound,
        steps: int = LatentPerturbationConfig.steps,
        attacker_steps: int = LatentPerturbationConfig.attacker_steps,
        split_layer: str | None = LatentPerturbationConfig.split_layer,
        seed: int | None = LatentPerturbationConfig.seed,
        num_threads: int | None = LatentPerturbationConfig.num_threads,
        data_spec: str = DEFAULT_DATA_SPEC_FILE,
    ) -> None:
        self.epsilon = epsilon
        self.task_loss_bound = task_loss_bound
        self.steps = steps
        self.attacker_steps = attacker_steps
        self.split_layer = split_layer
        self.seed = seed
        self.num_threads = num_threads
        self.data_spec = data_spec
        super().__init__(data_spec)

    def _build_defense(self) -> Defense:
        return LatentPerturbation(
            LatentPerturbationConfig(
                epsilon=self.epsilon,
                task_loss_bound=self.task_loss_bound,
                steps=self.steps,
                attacker_steps=self.attacker_steps,
                split_layer=self.split_layer,
                seed=self.seed,
                num_threads=self.num_threads,
            )
        )
