"""The FLARE defense filters, run through ``filter.process(shareable, fl_ctx)`` with a real FLContext.

A fake engine gives the context a real ``nvflare.apis.workspace.Workspace`` whose app config folder
holds the job's ``gia_data.json``; the global model reaches the filters the way FLARE delivers it
(``FLContextKey.TASK_DATA`` at ``EventType.BEFORE_TASK_EXECUTION``, cleared before result filters).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants

from nvflare_gia.data import DataSpec
from nvflare_gia.defenses import GaussianNoiseConfig, LaplacianNoiseConfig, LatentPerturbationConfig, ShadowModelConfig
from nvflare_gia.errors import ConfigError
from nvflare_gia.flare.filters import (
    GIA_DEFENSE_META_KEY,
    GaussianNoiseFilter,
    LaplacianNoiseFilter,
    LatentPerturbationFilter,
    ShadowModelFilter,
)
from nvflare_gia.models import SmallCNN

CXR_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih_cxr1000_64.npz"
SITE = "site-1"
JOB_ID = "job-1"
ROUND = 3
TASK_ID = "task-a"

FILTER_CONFIGS = [
    (GaussianNoiseFilter, GaussianNoiseConfig),
    (LaplacianNoiseFilter, LaplacianNoiseConfig),
    (ShadowModelFilter, ShadowModelConfig),
    (LatentPerturbationFilter, LatentPerturbationConfig),
]
DATA_AWARE = (ShadowModelFilter, LatentPerturbationFilter)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _seeded(filter_cls):
    return filter_cls(seed=0)


# ---------------------------------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class Site:
    engine: Any
    config_dir: Path
    global_state: dict[str, np.ndarray]
    update: dict[str, np.ndarray]
    meta: dict


@pytest.fixture(scope="module")
def site(tmp_path_factory, site_workspace, train_site_round) -> Site:
    """A site-1 workspace with the job's data spec, and the update site-1's client script would send in round 3."""
    engine, config_dir = site_workspace(tmp_path_factory.mktemp("workspace"), SITE, JOB_ID)
    source = str(CXR_PATH) if CXR_PATH.is_file() else "synthetic"
    spec = DataSpec(source=source, scheme="tmi2023", site_names=(SITE, "site-2", "site-3"))
    (config_dir / "gia_data.json").write_text(spec.to_json())

    global_state, update, meta = train_site_round(spec, SITE, ROUND)
    return Site(engine, config_dir, global_state, update, meta)


def _context(site: Site, task_id: str = TASK_ID) -> FLContext:
    fl_ctx = site.engine.new_context()
    fl_ctx.set_prop(FLContextKey.TASK_ID, task_id, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    return fl_ctx


def _deliver_global_model(flt, site: Site, fl_ctx: FLContext, global_state=None) -> None:
    """What FLARE does around the executor: TASK_DATA at BEFORE_TASK_EXECUTION, cleared afterwards."""
    task_data = DXO(DataKind.WEIGHTS, dict(global_state if global_state is not None else site.global_state)).to_shareable()
    task_data.set_header(AppConstants.CURRENT_ROUND, ROUND)
    flt.handle_event(EventType.START_RUN, fl_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, task_data, private=True, sticky=False)
    flt.handle_event(EventType.BEFORE_TASK_EXECUTION, fl_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, None, private=True, sticky=False)


def _result(site: Site, data: dict | None = None, kind: str = DataKind.WEIGHT_DIFF, meta: dict | None = None) -> Shareable:
    dxo = DXO(kind, {k: np.array(v, copy=True) for k, v in (data if data is not None else site.update).items()},
              meta=copy.deepcopy(meta if meta is not None else site.meta))
    return dxo.to_shareable()


def _run(flt, site: Site, shareable: Shareable, *, deliver: bool = True) -> DXO:
    fl_ctx = _context(site)
    if deliver:
        _deliver_global_model(flt, site, fl_ctx)
    return from_shareable(flt.process(shareable, fl_ctx))


def _float_keys(update: dict) -> list[str]:
    return [k for k, v in update.items() if np.asarray(v).dtype.kind == "f"]


# ---------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("filter_cls", "config_cls"), FILTER_CONFIGS, ids=lambda c: c.__name__)
def test_filter_signature_matches_its_config_fields_and_defaults(filter_cls, config_cls):
    parameters = inspect.signature(filter_cls.__init__).parameters
    fields = {f.name: f.default for f in dataclasses.fields(config_cls)}
    extra = {"data_spec"} if filter_cls in DATA_AWARE else set()
    assert set(parameters) - {"self"} == set(fields) | extra
    for name, default in fields.items():
        assert parameters[name].default == default, name
        assert parameters[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if extra:
        assert parameters["data_spec"].default == "gia_data.json"


@pytest.mark.parametrize(("filter_cls", "config_cls"), FILTER_CONFIGS, ids=lambda c: c.__name__)
def test_filter_stores_each_arg_unchanged(filter_cls, config_cls):
    flt = filter_cls()
    for field in dataclasses.fields(config_cls):
        assert getattr(flt, field.name) == field.default
    assert filter_cls(seed=7).seed == 7


@pytest.mark.parametrize(
    ("factory", "error", "pattern"),
    [
        (lambda: GaussianNoiseFilter(sigma0=-1.0), ConfigError, "sigma0"),
        (lambda: GaussianNoiseFilter(percentile=200), ConfigError, "percentile"),
        (lambda: LaplacianNoiseFilter(b=0.0), ConfigError, "b must be"),
        (lambda: ShadowModelFilter(saliency="gradcm"), ConfigError, "Did you mean 'gradcam'"),
        (lambda: ShadowModelFilter(data_spec=""), TypeError, "data_spec"),
        (lambda: LatentPerturbationFilter(steps=0), ConfigError, "steps"),
    ],
)
def test_filters_validate_args_at_construction(factory, error, pattern):
    with pytest.raises(error, match=pattern):
        factory()


# ---------------------------------------------------------------------------------------- defending


def test_gaussian_filter_defends_a_weight_diff_and_records_what_it_did(site):
    flt = GaussianNoiseFilter(seed=0)
    dxo = _run(flt, site, _result(site))
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    assert set(dxo.data) == set(site.update)
    for key, value in site.update.items():
        assert dxo.data[key].dtype == value.dtype and dxo.data[key].shape == value.shape
        if key.endswith("num_batches_tracked"):
            assert np.array_equal(dxo.data[key], value)
        else:
            assert not np.array_equal(dxo.data[key], value), key
    record = dxo.get_meta_prop(GIA_DEFENSE_META_KEY)
    assert set(record) == {"name", "params", "noise_norm", "seconds"}
    assert record["name"] == "GaussianNoise" and record["params"]["sigma0"] == 0.1
    assert record["noise_norm"] > 0 and record["seconds"] >= 0
    assert "GaussianNoiseFilter" in dxo.get_filter_history()
    assert dxo.get_meta_prop("gia_training") == site.meta["gia_training"]


def test_gaussian_filter_round_trips_weights_through_the_cached_global_model(site):
    weights = {k: site.global_state[k] + site.update[k] for k in site.update}
    flt = GaussianNoiseFilter(perturb_bn_stats=False, seed=0)
    dxo = _run(flt, site, _result(site, weights, kind=DataKind.WEIGHTS))
    assert dxo.data_kind == DataKind.WEIGHTS
    sigma = dxo.get_meta_prop(GIA_DEFENSE_META_KEY)["params"]["sigma"]
    noise = np.concatenate([(dxo.data[k] - weights[k]).ravel() for k in _float_keys(weights) if "running" not in k])
    assert noise.std() == pytest.approx(sigma, rel=0.05)
    for key, value in weights.items():
        assert dxo.data[key].dtype == value.dtype
        if key.endswith("num_batches_tracked"):
            assert np.array_equal(dxo.data[key], value)
        elif "running" in key:
            np.testing.assert_allclose(dxo.data[key], value, rtol=1e-6, atol=1e-7)


def test_laplacian_filter_defends_torch_tensors_and_keeps_their_types(site):
    data = {k: torch.from_numpy(np.array(v)) for k, v in site.update.items()}
    flt = LaplacianNoiseFilter(seed=0)
    fl_ctx = _context(site)
    _deliver_global_model(flt, site, fl_ctx)
    dxo = from_shareable(flt.process(DXO(DataKind.WEIGHT_DIFF, data, meta=dict(site.meta)).to_shareable(), fl_ctx))
    for key, value in data.items():
        assert isinstance(dxo.data[key], torch.Tensor) and dxo.data[key].dtype == value.dtype
    assert dxo.get_meta_prop(GIA_DEFENSE_META_KEY)["name"] == "LaplacianNoise"


@pytest.mark.parametrize("filter_cls", DATA_AWARE, ids=lambda c: c.__name__)
def test_data_aware_filters_defend_with_the_sites_own_data(site, filter_cls):
    flt = filter_cls(seed=0)
    dxo = _run(flt, site, _result(site))
    record = dxo.get_meta_prop(GIA_DEFENSE_META_KEY)
    assert record["name"] in ("ShadowModelDefense", "LatentPerturbation")
    assert record["params"]["num_images"] == 1
    params = [name for name, _ in SmallCNN().named_parameters()]
    a = np.concatenate([dxo.data[k].ravel() for k in params]).astype(np.float64)
    b = np.concatenate([site.update[k].ravel() for k in params]).astype(np.float64)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert 0.5 < cosine < 1.0 - 1e-9
    for key, value in site.update.items():
        assert dxo.data[key].dtype == value.dtype
        if key.endswith("num_batches_tracked"):
            assert np.array_equal(dxo.data[key], value)


def test_defended_result_survives_the_wire_format(site):
    from nvflare.app_common.decomposers import numpy_decomposers

    numpy_decomposers.register()
    fl_ctx = _context(site)
    flt = GaussianNoiseFilter(seed=0)
    _deliver_global_model(flt, site, fl_ctx)
    out = flt.process(_result(site), fl_ctx)
    dxo = from_shareable(Shareable.from_bytes(out.to_bytes()))
    expected = from_shareable(out)
    for key in site.update:
        assert np.array_equal(dxo.data[key], expected.data[key])


def test_error_reply_without_data_passes_through(site):
    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    for filter_cls, _ in FILTER_CONFIGS:
        assert _seeded(filter_cls).process(reply, _context(site)) is reply


# ---------------------------------------------------------------------------------------- failing closed


def _with(update: dict, key: str, value) -> dict:
    out = {k: np.array(v, copy=True) for k, v in update.items()}
    out[key] = value
    return out


ALL_FILTERS = [cls for cls, _ in FILTER_CONFIGS]


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_filters_fail_closed_on_non_finite_values(site, filter_cls, bad):
    value = np.array(site.update["features.4.weight"], copy=True)
    value.flat[5] = bad
    with pytest.raises(ContentBlockedException, match="non-finite"):
        _run(_seeded(filter_cls), site, _result(site, _with(site.update, "features.4.weight", value)))


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_on_a_shape_that_differs_from_the_global_model(site, filter_cls):
    bad = _with(site.update, "classifier.weight", np.zeros((2, 32), dtype=np.float32))
    with pytest.raises(ContentBlockedException, match=r"update\['classifier.weight'\] has shape \(2, 32\); global model has \(2, 64\)"):
        _run(_seeded(filter_cls), site, _result(site, bad))


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_on_a_missing_key(site, filter_cls):
    bad = {k: v for k, v in site.update.items() if k != "classifier.bias"}
    with pytest.raises(ContentBlockedException, match="lacks"):
        _run(_seeded(filter_cls), site, _result(site, bad))


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", [DataKind.METRICS, DataKind.FL_MODEL, DataKind.APP_DEFINED])
def test_filters_fail_closed_on_a_wrong_data_kind(site, filter_cls, kind):
    shareable = DXO(kind, {"accuracy": 0.5}, meta=dict(site.meta)).to_shareable()
    with pytest.raises(ContentBlockedException, match="WEIGHTS or WEIGHT_DIFF"):
        _run(_seeded(filter_cls), site, shareable)


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_on_a_collection_or_a_result_without_dxo(site, filter_cls):
    inner = DXO(DataKind.WEIGHT_DIFF, {k: np.array(v) for k, v in site.update.items()})
    collection = DXO(DataKind.COLLECTION, {"model": inner}).to_shareable()
    with pytest.raises(ContentBlockedException, match="WEIGHTS or WEIGHT_DIFF"):
        _run(_seeded(filter_cls), site, collection)
    plain = Shareable()
    plain["weights"] = np.zeros(3)
    with pytest.raises(ContentBlockedException, match="without a DXO"):
        _run(_seeded(filter_cls), site, plain)


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_on_weights_without_a_cached_global_model(site, filter_cls):
    weights = {k: site.global_state[k] + site.update[k] for k in site.update}
    with pytest.raises(ContentBlockedException, match="was not cached"):
        _run(_seeded(filter_cls), site, _result(site, weights, kind=DataKind.WEIGHTS), deliver=False)


@pytest.mark.parametrize("filter_cls", DATA_AWARE, ids=lambda c: c.__name__)
def test_data_aware_filters_fail_closed_on_a_weight_diff_without_a_cached_global_model(site, filter_cls):
    with pytest.raises(ContentBlockedException, match="was not cached"):
        _run(_seeded(filter_cls), site, _result(site), deliver=False)


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_forget_the_global_model_at_start_run(site, filter_cls):
    flt = _seeded(filter_cls)
    fl_ctx = _context(site)
    _deliver_global_model(flt, site, fl_ctx)
    flt.handle_event(EventType.START_RUN, fl_ctx)
    weights = {k: site.global_state[k] + site.update[k] for k in site.update}
    with pytest.raises(ContentBlockedException, match="was not cached"):
        flt.process(_result(site, weights, kind=DataKind.WEIGHTS), fl_ctx)


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_when_the_cached_model_belongs_to_another_task(site, filter_cls):
    flt = _seeded(filter_cls)
    _deliver_global_model(flt, site, _context(site, task_id="older-task"))
    with pytest.raises(ContentBlockedException, match="belongs to task 'older-task'"):
        flt.process(_result(site), _context(site))


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_on_an_exception_inside_the_defense(site, filter_cls, monkeypatch):
    flt = _seeded(filter_cls)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(flt._defense, "apply", broken)
    with pytest.raises(ContentBlockedException, match="boom"):
        _run(flt, site, _result(site))


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_fail_closed_when_the_defense_returns_non_finite_values(site, filter_cls, monkeypatch):
    flt = _seeded(filter_cls)
    original = flt._defense.apply

    def poisoned(update, **kwargs):
        outcome = original(update, **kwargs)
        outcome.update["classifier.bias"] = np.full(2, np.nan, dtype=np.float32)
        return outcome

    monkeypatch.setattr(flt._defense, "apply", poisoned)
    with pytest.raises(ContentBlockedException, match="defended result"):
        _run(flt, site, _result(site))


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_block_an_error_reply_that_carries_an_update(site, filter_cls):
    shareable = _result(site)
    shareable.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    with pytest.raises(ContentBlockedException, match="must not carry data"):
        _run(_seeded(filter_cls), site, shareable)


@pytest.mark.parametrize("where", ["entry", "header"])
@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_block_a_result_that_stashes_the_update_outside_its_dxo(site, filter_cls, where):
    shareable = _result(site)
    raw = {k: np.array(v, copy=True) for k, v in site.update.items()}
    if where == "entry":
        shareable["raw_update"] = raw
    else:
        shareable.set_header("stash", raw)
    expected = "arrays under entry 'raw_update'" if where == "entry" else "arrays in its headers"
    with pytest.raises(ContentBlockedException, match=f"{expected} outside its DXO"):
        _run(_seeded(filter_cls), site, shareable)


@pytest.mark.parametrize("filter_cls", DATA_AWARE, ids=lambda c: c.__name__)
def test_data_aware_filters_fail_closed_without_training_meta(site, filter_cls):
    with pytest.raises(ContentBlockedException, match="gia_training"):
        _run(_seeded(filter_cls), site, _result(site, meta={}))


@pytest.mark.parametrize("filter_cls", DATA_AWARE, ids=lambda c: c.__name__)
def test_data_aware_filters_fail_closed_without_the_data_spec(site, filter_cls):
    with pytest.raises(ContentBlockedException, match="data_spec"):
        _run(filter_cls(seed=0, data_spec="missing.json"), site, _result(site))


@pytest.mark.parametrize("filter_cls", DATA_AWARE, ids=lambda c: c.__name__)
def test_data_aware_filters_fail_closed_when_the_meta_disagrees_with_the_site_data(site, filter_cls):
    meta = copy.deepcopy(site.meta)
    meta["gia_training"]["num_images"] = 8
    with pytest.raises(ContentBlockedException, match="num_images=8"):
        _run(_seeded(filter_cls), site, _result(site, meta=meta))


@pytest.mark.parametrize("filter_cls", DATA_AWARE, ids=lambda c: c.__name__)
def test_data_aware_filters_must_run_first(site, filter_cls):
    meta = copy.deepcopy(site.meta)
    meta[GIA_DEFENSE_META_KEY] = {"name": "GaussianNoise", "params": {}, "noise_norm": 1.0, "seconds": 0.0}
    with pytest.raises(ContentBlockedException, match="first defense"):
        _run(_seeded(filter_cls), site, _result(site, meta=meta))


def test_noise_filter_after_a_data_aware_filter_keeps_both_records(site):
    fl_ctx = _context(site)
    first, second = ShadowModelFilter(seed=0), GaussianNoiseFilter(seed=0)
    for flt in (first, second):
        _deliver_global_model(flt, site, fl_ctx)
    out = second.process(first.process(_result(site), fl_ctx), fl_ctx)
    record = from_shareable(out).get_meta_prop(GIA_DEFENSE_META_KEY)
    assert record["name"] == "GaussianNoise" and record["previous"]["name"] == "ShadowModelDefense"


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_build_from_a_json_component_config(filter_cls, build_component):
    path = f"nvflare_gia.flare.filters.{filter_cls.__name__}"
    assert isinstance(build_component(path, {}), filter_cls)
    assert build_component(path, {"seed": 3}).seed == 3


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_use_the_round_of_the_cached_task(site, filter_cls):
    flt = _seeded(filter_cls)
    fl_ctx = _context(site)
    _deliver_global_model(flt, site, fl_ctx)
    shareable = _result(site)
    context = flt._context(from_shareable(shareable), shareable, fl_ctx)
    assert context.round_index == ROUND


@pytest.mark.parametrize("filter_cls", ALL_FILTERS, ids=lambda c: c.__name__)
def test_filters_accept_float64_counters_after_fedavg(site, filter_cls):
    global_state = {k: (v.astype(np.float64) if k.endswith("num_batches_tracked") else v) for k, v in site.global_state.items()}
    update = {k: (v.astype(np.float64) if k.endswith("num_batches_tracked") else v) for k, v in site.update.items()}
    flt = _seeded(filter_cls)
    fl_ctx = _context(site)
    _deliver_global_model(flt, site, fl_ctx, global_state=global_state)
    dxo = from_shareable(flt.process(_result(site, update), fl_ctx))
    for key in update:
        if key.endswith("num_batches_tracked"):
            assert dxo.data[key].dtype == np.float64 and np.array_equal(dxo.data[key], update[key])
