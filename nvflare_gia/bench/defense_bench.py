"""``nvflare-gia bench defenses``: privacy–utility of every defense on the TMI 2023 protocol.

The protocol of DESIGN.md, run in process with the same code the FLARE job runs (the client's
``train_local``, the core defenses the filters wrap, FedAvg weighted by local steps as FLARE's
``FedAvg`` does, and the server widget's ``audit_update``): a high-risk site (1 image, batch 1),
two small sites (8 images, batch 4) and a large site (the rest, batch 8); ``SmallCNN``; SGD lr 0.01,
one local epoch. Every defense is applied on every site, as its job folder does. Utility is the
final global model's accuracy and F1 on the test split; leakage is the attack on the high-risk
site's defended update in the last round (``audit_rounds="last"``) or in every round, averaged
(``"all"``), scored against its true image.

``calibrated_gaussian``, ``calibrated_shadow`` and ``calibrated_latent`` (run only when named) run
:class:`nvflare_gia.defenses.calibrated.CalibratedDefense` (what ``CalibratedDefenseFilter`` applies)
on every site with the grid's RDLV ``target``: each round the site searches the weakest Gaussian
``sigma0`` / shadow ``budget`` / latent ``epsilon`` whose self-audited RDLV
is at or under the target minus the default ``margin``. To keep ``--quick`` within its time limit the self-audit has a short, fixed
budget (:data:`BENCH_SELF_AUDIT`: one restart of 300 iterations on one thread, about 2-3 s per
audit at batch 1 on an idle 2-core machine, deterministic; a ladder factor of 4, so at most 6 tries
per round for the default strength ranges, plus the default one confirmation of each rung that passes) and audits only the high-risk site (``max_images=1``);
the other sites are not audited and get the ladder's weakest strength, as the filter does for
clients above ``max_images``. The audit is therefore much weaker than the
server's attack (30 s or 60 s, several restarts), which is what the margin is for. An update whose calibration fails (no strength meets the target) is left out of that
round's FedAvg, as FLARE does with ``ignore_result_error``; if that happens to the high-risk site
in the last round, its leakage keys are None.
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvflare_gia.attack import AttackConfig, GradientInversionAttack
from nvflare_gia.audit import AuditTarget, audit_update
from nvflare_gia.data import DataSpec, load_site_data, load_splits, load_test_data
from nvflare_gia.defenses import DefenseContext
from nvflare_gia.defenses.calibrated import CALIBRATION_PARAM
from nvflare_gia.errors import ConfigError, DataError, load_json_file
from nvflare_gia.models import build_model
from nvflare_gia.training import TrainingConfig, evaluate, train_local, training_meta

__all__ = ["DEFENSE_FACTORIES", "QUICK_GRID", "FULL_GRID", "parse_grid", "run_defense_benchmark", "merge_defense_benchmarks", "equal_utility"]

logger = logging.getLogger(__name__)

SITES = ("site-1", "site-2", "site-3", "site-4")
HIGH_RISK_SITE = "site-1"
#: the attack's leakage metrics on the high-risk site (``gia/<key>`` in an audit record);
#: ``prior_attacker_accuracy`` is the reference classifier's accuracy on the attacker's flat prior,
#: the level ``attacker_accuracy`` reaches without any information from the update
LEAKAGE_KEYS = ("ssim", "psnr", "mse", "rdlv", "attacker_accuracy", "prior_attacker_accuracy")
RUN_KEYS = ("defense", "params", "accuracy", "f1", *LEAKAGE_KEYS, "filter_seconds")
#: the undefended model must beat always predicting the test split's majority class by this much
#: for "equal utility" to compare models that learned something
LEARNED_MARGIN = 0.05
#: the numbers a multi-seed run compares seed by seed with no defense (``vs_none``)
PAIRED_KEYS = ("accuracy", "f1", "ssim", "psnr", "mse", "rdlv", "attacker_accuracy")
#: protocol entries that must agree for :func:`merge_defense_benchmarks` to pool two outputs
MERGE_PROTOCOL_KEYS = ("data", "rounds", "quick", "attack_seconds", "attack_iterations", "audit_rounds", "self_audit")
#: values of ``audit_rounds``: attack the high-risk site's update of the last round, or of every round
AUDIT_ROUNDS = ("last", "all")

#: defense name -> (module, defense class, config class)
DEFENSE_FACTORIES: dict[str, tuple[str, str, str]] = {
    "gaussian": ("nvflare_gia.defenses", "GaussianNoise", "GaussianNoiseConfig"),
    "laplacian": ("nvflare_gia.defenses", "LaplacianNoise", "LaplacianNoiseConfig"),
    "shadow": ("nvflare_gia.defenses", "ShadowModelDefense", "ShadowModelConfig"),
    "latent": ("nvflare_gia.defenses", "LatentPerturbation", "LatentPerturbationConfig"),
    "calibrated_gaussian": ("nvflare_gia.defenses.calibrated", "CalibratedDefense", "CalibratedDefenseConfig"),
    "calibrated_shadow": ("nvflare_gia.defenses.calibrated", "CalibratedDefense", "CalibratedDefenseConfig"),
    "calibrated_latent": ("nvflare_gia.defenses.calibrated", "CalibratedDefense", "CalibratedDefenseConfig"),
}

#: calibrated defense name -> the defense it wraps
CALIBRATED: dict[str, str] = {"calibrated_gaussian": "gaussian", "calibrated_shadow": "shadow", "calibrated_latent": "latent"}
#: defenses a run without ``defenses`` leaves out (name them to run them): the calibrated latent
#: perturbation plays its min-max game once per audited strength and on every site, 282-406 s per
#: run on PneumoniaMNIST on the 2-core benchmark machine, too slow for ``--quick``'s 20 minutes
OPT_IN: frozenset[str] = frozenset({"calibrated_latent"})
#: the benchmark's self-audit budget (see the module docstring): iterations only (deterministic),
#: high-risk site only
BENCH_SELF_AUDIT: dict[str, Any] = {
    "max_iterations": 300, "restarts": 1, "max_seconds": None, "total_seconds": None, "max_images": 1, "ladder_factor": 4.0, "num_threads": 1,
}

#: strengths, weakest first (the equal-utility pick is the strongest within 1 point of no defense)
QUICK_GRID: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "gaussian": [{"sigma0": 0.1}, {"sigma0": 1.0}],
    "laplacian": [{"b": 1e-4}, {"b": 1e-3}],
    "shadow": [{"budget": 0.5}, {"budget": 2.0}, {"budget": 4.0}],
    "latent": [{}, {"epsilon": 1.0}],
    "calibrated_gaussian": [{"target": 0.0}],
    "calibrated_shadow": [{"target": 0.0}],
    "calibrated_latent": [{"target": 0.0}],
}
FULL_GRID: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "gaussian": [{"sigma0": 0.03}, {"sigma0": 0.1}, {"sigma0": 0.3}, {"sigma0": 1.0}],
    "laplacian": [{"b": 3e-5}, {"b": 1e-4}, {"b": 3e-4}, {"b": 1e-3}],
    "shadow": [{"budget": 0.25}, {"budget": 0.5}, {"budget": 1.0}, {"budget": 2.0}, {"budget": 4.0}],
    "latent": [{"epsilon": 0.1}, {}, {"epsilon": 1.0}],
    "calibrated_gaussian": [{"target": 0.1}, {"target": 0.0}],
    "calibrated_shadow": [{"target": 0.1}, {"target": 0.0}],
    "calibrated_latent": [{"target": 0.1}, {"target": 0.0}],
}


def parse_grid(entries: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Parse ``bench defenses --grid`` entries ``DEFENSE:PARAM=V1,V2,...`` into settings.

    Each entry gives one defense one strength parameter and its values, weakest first (the
    equal-utility pick is the last within tolerance); a defense named twice is an error. Values are
    JSON numbers, ``true``/``false`` or bare strings.

    Args:
        entries: e.g. ``["shadow:budget=0.1,0.25", "gaussian:sigma0=0.03"]``.

    Returns:
        ``{defense: [{param: value}, ...]}``.

    Raises:
        ConfigError: for a malformed entry, an unknown defense, a defense given twice or an empty value.

    Example:
        >>> parse_grid(["shadow:budget=0.1,0.25"])
        {'shadow': [{'budget': 0.1}, {'budget': 0.25}]}
    """
    grid: dict[str, list[dict[str, Any]]] = {}
    allowed = sorted(set(QUICK_GRID) - {"none"})
    for entry in entries:
        name, _, assignment = str(entry).partition(":")
        param, _, values = assignment.partition("=")
        if not (name and param.strip() and values):
            raise ConfigError(f"parse_grid: grid entries must look like DEFENSE:PARAM=V1,V2 (e.g. shadow:budget=0.1,0.25), got {entry!r}.")
        if name not in allowed:
            raise ConfigError(f"parse_grid: the defense of grid entry {entry!r} must be one of {allowed}, got {name!r}.")
        if name in grid:
            raise ConfigError(f"parse_grid: defense {name!r} is given twice in the grid; give one entry per defense.")
        texts = values.split(",")
        if any(not text.strip() for text in texts):
            raise ConfigError(f"parse_grid: grid entry {entry!r} has an empty value.")
        grid[name] = [{param.strip(): _grid_value(text.strip())} for text in texts]
    return grid


def _grid_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_defense(name: str, params: Mapping[str, Any], seed: int):
    """Build a core defense by name with ``params`` overriding its config defaults (calibrated
    defenses: the wrapped defense and :data:`BENCH_SELF_AUDIT` first)."""
    if name not in DEFENSE_FACTORIES:
        raise ConfigError(f"build_defense: name must be one of {sorted(DEFENSE_FACTORIES)}, got {name!r}.")
    module_name, class_name, config_name = DEFENSE_FACTORIES[name]
    module = importlib.import_module(module_name)
    base = {"defense": CALIBRATED[name], **BENCH_SELF_AUDIT} if name in CALIBRATED else {}
    config = getattr(module, config_name)(**{**base, **params, "seed": seed})
    return getattr(module, class_name)(config)


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _fedavg(global_state: dict[str, np.ndarray], updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """FLARE FedAvg on WEIGHT_DIFF: global + Σ steps_i·Δ_i / Σ steps_i (integer buffers rounded back)."""
    total = float(sum(steps for _, steps in updates))
    new_state = {}
    for key, value in global_state.items():
        mean_delta = sum(np.asarray(update[key], dtype=np.float64) * steps for update, steps in updates) / total
        new_state[key] = (value.astype(np.float64) + mean_delta).astype(value.dtype) if np.issubdtype(value.dtype, np.floating) else np.rint(value + mean_delta).astype(value.dtype)
    return new_state


def _reference_classifier(spec: DataSpec, seed: int, epochs: int) -> torch.nn.Module:
    """A classifier trained centrally on the whole training split (Jiang et al. 2025's judge)."""
    splits = load_splits(spec)
    model = build_model("small_cnn", splits.num_classes, init_seed=seed + 1)
    train_local(model, splits.train_images, splits.train_labels, 32, TrainingConfig(optimizer="adam", lr=1e-3, local_epochs=epochs, seed=seed))
    return model.eval()


def _run_one(
    defense_name: str,
    params: Mapping[str, Any],
    *,
    spec: DataSpec,
    rounds: int,
    attack: GradientInversionAttack,
    reference: torch.nn.Module,
    seed: int,
    audit_rounds: str = "last",
) -> dict[str, Any]:
    sites = {name: load_site_data(spec, name) for name in SITES}
    test_images, test_labels = load_test_data(spec)
    training = TrainingConfig(seed=seed)
    num_classes = sites[HIGH_RISK_SITE].num_classes
    model = build_model("small_cnn", num_classes, init_seed=seed)
    global_state = _state(model)
    defense = None if defense_name == "none" else build_defense(defense_name, params, seed)
    filter_seconds: list[float] = []
    audited: list[AuditTarget] = []
    blocked = 0
    for round_index in range(rounds):
        updates = []
        for name, site in sites.items():
            model.load_state_dict({k: torch.as_tensor(v) for k, v in global_state.items()})
            steps = train_local(model, site.train_images, site.train_labels, site.batch_size, training, round_index=round_index)
            update = {k: v - global_state[k] for k, v in _state(model).items()}
            meta = {"NUM_STEPS_CURRENT_ROUND": steps, "gia_training": training_meta(training, "small_cnn", site.train_images, num_classes, site.batch_size)}
            if defense is not None:
                context = DefenseContext.from_training_meta(meta, images=site.train_images, labels=site.train_labels, round_index=round_index)
                started = time.perf_counter()
                try:
                    outcome = defense.apply(update, global_state=global_state, context=context)
                except DataError as exc:  # the filter fails closed (FLARE drops the result): the site sends nothing this round
                    filter_seconds.append(time.perf_counter() - started)
                    blocked += 1
                    logger.warning("round %d %s: update blocked: %s", round_index, name, exc)
                    continue
                update = {k: np.asarray(v) for k, v in outcome.update.items()}
                filter_seconds.append(outcome.seconds)
                calibration = outcome.params.get(CALIBRATION_PARAM) if defense_name in CALIBRATED else None
                if calibration is not None and calibration["status"] == "audited":
                    logger.info(
                        "round %d %s: %s = %.4g (self-audited %s %.3f, %d tries, %.1f s)", round_index, name, calibration["strength_name"],
                        calibration["strength"], calibration["metric"], calibration["value"], calibration["num_tries"], calibration["seconds"],
                    )
            if name == HIGH_RISK_SITE and (audit_rounds == "all" or round_index == rounds - 1):
                audited.append(AuditTarget(name, round_index, copy.deepcopy(global_state), update, meta))
            updates.append((update, steps))
        if updates:
            global_state = _fedavg(global_state, updates)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in global_state.items()})
    utility = evaluate(model, test_images, test_labels)
    if blocked:
        logger.warning("%s %s: %d site updates blocked over %d rounds", defense_name, json.dumps(dict(params)), blocked, rounds)
    leakage = _mean_leakage([audit_update(target, attack, truth=sites[HIGH_RISK_SITE], classifier=reference) for target in audited])

    return {
        "defense": defense_name,
        "params": dict(params),
        "accuracy": utility["accuracy"],
        "f1": utility["f1"],
        **leakage,
        "filter_seconds": float(np.mean(filter_seconds)) if filter_seconds else 0.0,
        "audited_rounds": len(audited),
        "attacked_label": _attacked_label(sites[HIGH_RISK_SITE].train_labels),
    }


def _attacked_label(labels: np.ndarray) -> int | None:
    """The class of the high-risk site's image (None if the site holds more or fewer than one)."""
    return int(labels[0]) if len(labels) == 1 else None


def _mean_leakage(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """``{key: mean}`` of each of :data:`LEAKAGE_KEYS` over the audited rounds' records (``gia/<key>``);
    None where no round has a value (every audited update was blocked: nothing to attack)."""
    mean: dict[str, float | None] = {}
    for key in LEAKAGE_KEYS:
        values = [record[f"gia/{key}"] for record in records if record.get(f"gia/{key}") is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean


def equal_utility(runs: Sequence[Mapping[str, Any]], tolerance: float = 0.01) -> dict[str, dict[str, Any]]:
    """For each defense, its strongest setting (last in grid order) whose accuracy is within
    ``tolerance`` of no defense; a defense with no such setting is left out.

    Over several seeds the comparison is paired: the mean of the seed-by-seed accuracy differences
    (``vs_none``), which equals the difference of the means when both ran on the same seeds and
    stays fair when a merged setting lacks some of them."""
    baseline = next((r["accuracy"] for r in runs if r["defense"] == "none"), None)
    picks: dict[str, dict[str, Any]] = {}
    if baseline is None:
        return picks
    for run in runs:
        paired = (run.get("vs_none") or {}).get("accuracy") or {}
        difference = paired["mean"] if paired.get("mean") is not None else run["accuracy"] - baseline
        if difference >= -tolerance:
            picks[run["defense"]] = dict(run)
    return picks


def run_defense_benchmark(
    *,
    quick: bool,
    data: str | None,
    json_path: str,
    rounds: int | None = None,
    attack_seconds: float | None = None,
    defenses: Sequence[str] | None = None,
    seed: int = 0,
    seeds: int = 1,
    grid: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    attack_iterations: int | None = None,
    audit_rounds: str = "last",
) -> dict[str, Any]:
    """Run the privacy–utility benchmark and write ``json_path`` and a CSV beside it.

    Args:
        quick: a smaller grid and fewer rounds (same protocol).
        data: a ``.npz`` of the shared format; None uses ``../shared/data/nih_cxr1000_64.npz``
            when present, synthetic images otherwise.
        json_path: output JSON (``{"runs": [...], "equal_utility": {...}}``).
        rounds: FL rounds (default 5 quick, 15 full).
        attack_seconds: wall-clock attack budget per run (default 30 quick, 60 full).
        attack_iterations: instead of a wall-clock budget, give each of the attack's restarts
            this many iterations (>= 1) with no time limit, so the attack, and with it every
            leakage number, is the same on a rerun whatever else the machine is doing. Under a
            wall-clock budget one image's SSIM moved by up to 0.13 between runs.
        defenses: subset of the grid's defense names; None runs the defenses ``grid`` names, or
            without a grid every defense but those in :data:`OPT_IN`.
        seed: seed of model init, data partition (which image is the high-risk site's), shuffling,
            noise and attack.
        seeds: repetitions (>= 1) with seeds ``seed, seed + 1, ...``. With more than one, each
            run's numbers are the means over the seeds (leakage over the seeds whose high-risk
            update was not blocked; ``attacker_accuracy`` then is the share of seeds whose one
            reconstruction the reference classifier labelled correctly), ``stderr`` holds their
            standard errors, its ``per_seed`` list holds the single runs, ``vs_none`` holds the
            seed-by-seed differences from no defense (mean, standard error, ``n``; see
            :data:`PAIRED_KEYS`), ``balanced_attacker_accuracy`` averages attacker accuracy per class
            of the attacked image (each run records its ``attacked_label``), and the equal-utility
            picks compare the paired accuracy. One attacked image
            per seed makes single-seed leakage numbers noisy (on the quick protocol the
            undefended SSIM was 0.27–0.30 with seed 0 and 0.52–0.54 with seed 1).
        grid: settings that replace the named defenses' grids (see :func:`parse_grid`), weakest
            first; with ``defenses`` None only these defenses run (and ``none``). Every setting
            is built once before any training, so a bad parameter fails at once.
        audit_rounds: ``"last"`` attacks the high-risk site's update of the last round;
            ``"all"`` attacks its update of every round (``rounds`` times the attack time) and
            reports the mean over the rounds whose update was sent (``attacker_accuracy`` then is
            the share of those reconstructions the reference classifier labelled correctly);
            every run records how many it attacked under ``audited_rounds``.

    Every run also records ``prior_attacker_accuracy``: the reference classifier's accuracy on
    the attack's flat gray prior, labelled as the attacked images. Attacker accuracy shows leakage
    only above it (a classifier that calls a featureless image "pneumonia" is right on every
    pneumonia image).

    Returns:
        The JSON content.

    Raises:
        ConfigError: for an unknown defense, a bad grid or seeds value, or both attack budgets.
    """
    attack_budget = _attack_budget(attack_seconds, attack_iterations, quick)
    if audit_rounds not in AUDIT_ROUNDS:
        raise ConfigError(f"run_defense_benchmark: audit_rounds must be one of {list(AUDIT_ROUNDS)}, got {audit_rounds!r}.")
    settings_by_defense = dict(QUICK_GRID if quick else FULL_GRID)
    if defenses is not None:
        unknown = sorted(set(defenses) - set(settings_by_defense))
        if unknown:
            raise ConfigError(f"run_defense_benchmark: defenses must be among {sorted(settings_by_defense)}, got {unknown}.")
    if grid:
        benchmarked = set(defenses) if defenses is not None else set(settings_by_defense) - {"none"}
        outside = sorted(set(grid) - benchmarked)
        if outside:
            raise ConfigError(f"run_defense_benchmark: grid names defenses {outside} that are not benchmarked; they must be among {sorted(benchmarked)}.")
        for name, settings in grid.items():
            for params in settings:
                build_defense(name, params, seed)  # raises ConfigError for a bad parameter now, not after hours
        settings_by_defense.update({name: [dict(params) for params in settings] for name, settings in grid.items()})
    chosen = defenses if defenses is not None else (list(grid) if grid else set(settings_by_defense) - OPT_IN)
    settings_by_defense = {k: v for k, v in settings_by_defense.items() if k in chosen or k == "none"}
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"run_defense_benchmark: seeds must be an integer >= 1, got {seeds!r}.")
    rounds = rounds or (5 if quick else 15)
    source = data or _default_data()
    settings = [(name, params) for name, grid_settings in settings_by_defense.items() for params in grid_settings]
    single: list[list[dict[str, Any]]] = [[] for _ in settings]
    logger.info("%-10s %-22s %4s %8s %6s %6s %6s %7s %6s %8s", "defense", "params", "seed", "accuracy", "f1", "ssim", "rdlv", "psnr", "att.acc", "filter_s")
    for run_seed in range(seed, seed + seeds):
        spec = DataSpec(source=source, site_names=SITES, seed=run_seed)
        attack = GradientInversionAttack(AttackConfig(**attack_budget, seed=run_seed))
        reference = _reference_classifier(spec, run_seed, epochs=3 if quick else 8)
        for index, (name, params) in enumerate(settings):
            started = time.monotonic()
            run = _run_one(name, params, spec=spec, rounds=rounds, attack=attack, reference=reference, seed=run_seed, audit_rounds=audit_rounds)
            single[index].append({**run, "seed": run_seed})
            logger.info(
                "%-10s %-22s %4d %8.3f %6.3f %6.3f %6.3f %7.2f %6.2f %8.3f  (%.0f s)",
                name, json.dumps(params), run_seed, run["accuracy"], run["f1"],
                *(_nan(run[k]) for k in ("ssim", "rdlv", "psnr", "attacker_accuracy")), run["filter_seconds"], time.monotonic() - started,
            )
    runs = _summarise(single, multi_seed=seeds > 1)
    protocol = {
        "data": str(Path(source).resolve()) if Path(source).is_file() else str(source), "rounds": rounds, "seed": seed, "seeds": seeds, "quick": quick,
        "attack_seconds": attack_budget.get("max_seconds"), "attack_iterations": attack_iterations, "audit_rounds": audit_rounds,
        **_learning_check(runs, spec),
    }
    if any(name in CALIBRATED for name in settings_by_defense):
        protocol["self_audit"] = dict(BENCH_SELF_AUDIT)
    result = {"runs": runs, "equal_utility": equal_utility(runs), "protocol": protocol}
    _write_result(result, json_path)
    return result


def merge_defense_benchmarks(inputs: Sequence[str | Path], json_path: str | Path) -> dict[str, Any]:
    """Pool the seeds of several ``bench defenses`` outputs of one protocol into one result.

    A long benchmark can run its seeds in separate processes or on separate machines
    (``--seed K --seeds N`` each) and be reported as one run: every setting's single-seed runs are
    pooled, then the means, standard errors, paired differences from no defense (``vs_none``) and
    equal-utility picks are computed as :func:`run_defense_benchmark` computes them. A setting may
    lack some seeds (its means cover the seeds it has; ``vs_none`` pairs only the seeds both have).
    Settings keep the order in which the inputs first list them, which the equal-utility pick reads
    as weakest to strongest: give the inputs in that order when their grids differ.
    Files written before ``prior_attacker_accuracy`` or ``attacked_label`` existed give None for them.

    Args:
        inputs: two or more JSON files written by ``bench defenses`` (one or several seeds) or by
            this function.
        json_path: output JSON; a CSV is written beside it.

    Returns:
        The merged content; its protocol lists the pooled seeds (``seed_list``) and the inputs
        (``merged_from``).

    Raises:
        ConfigError: if fewer than two inputs are given.
        DataError: if an input is missing or not a ``bench defenses`` output, the inputs' protocols
            differ in one of :data:`MERGE_PROTOCOL_KEYS` (named, with both values; two ``data``
            paths that name the same existing file agree), or one setting
            has the same seed twice with different results (its timing aside).
    """
    paths = [Path(p) for p in inputs]
    if len(paths) < 2:
        raise ConfigError(f"merge_defense_benchmarks: inputs must name at least two JSON files, got {len(paths)}.")
    contents = [_load_defense_output(path) for path in paths]
    reference = contents[0]["protocol"]
    for path, content in zip(paths[1:], contents[1:]):
        for key in MERGE_PROTOCOL_KEYS:
            if key == "data" and _same_file(content["protocol"].get(key), reference.get(key)):
                continue
            if content["protocol"].get(key) != reference.get(key):
                raise DataError(
                    f"merge_defense_benchmarks: {str(path)!r} has protocol {key}={content['protocol'].get(key)!r} but "
                    f"{str(paths[0])!r} has {reference.get(key)!r}; only runs of one protocol can be pooled."
                )
    pooled: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for path, content in zip(paths, contents):
        for run in content["runs"]:
            setting = (run["defense"], json.dumps(run["params"], sort_keys=True))
            records = run.get("per_seed") or [{**run, "seed": content["protocol"]["seed"]}]
            by_seed = pooled.setdefault(setting, {})
            for record in records:
                record = {**{key: record.get(key) for key in (*RUN_KEYS, "audited_rounds", "attacked_label")}, "seed": int(record["seed"])}
                known = by_seed.get(record["seed"])
                if known is None:
                    by_seed[record["seed"]] = record
                elif _without_timing(known) != _without_timing(record):
                    raise DataError(
                        f"merge_defense_benchmarks: {setting[0]} {setting[1]} seed {record['seed']} appears twice with different "
                        f"results (the second in {str(path)!r}); rerun it or leave one file out."
                    )
    single = [[by_seed[seed] for seed in sorted(by_seed)] for by_seed in pooled.values()]
    runs = _summarise(single, multi_seed=True)
    seed_list = sorted({record["seed"] for records in single for record in records})
    protocol = {
        **reference,
        "seed": seed_list[0], "seeds": len(seed_list), "seed_list": seed_list, "merged_from": [str(p) for p in paths],
        **_learned_check(runs, float(reference["majority_accuracy"])),
    }
    result = {"runs": runs, "equal_utility": equal_utility(runs), "protocol": protocol}
    _write_result(result, json_path)
    return result


def _same_file(first: Any, second: Any) -> bool:
    """Whether two recorded ``data`` values name one existing file (older outputs hold the path as it
    was given, e.g. relative to where the run started; newer ones its absolute path)."""
    try:
        return os.path.samefile(str(first), str(second))
    except (OSError, TypeError, ValueError):
        return False


def _load_defense_output(path: Path) -> dict[str, Any]:
    """A ``bench defenses`` JSON, checked to have its runs and protocol."""
    content = load_json_file(path, "merge_defense_benchmarks", "inputs")
    required = ("defense", "params", "accuracy", "f1", "ssim", "audited_rounds")
    if (
        not isinstance(content, dict)
        or not isinstance(content.get("runs"), list)
        or not isinstance(content.get("protocol"), dict)
        or "majority_accuracy" not in content["protocol"]
        or not all(isinstance(run, dict) and all(key in run for key in required) for run in content["runs"])
    ):
        raise DataError(
            f"merge_defense_benchmarks: {str(path)!r} is not a `bench defenses` output (a 'runs' list whose runs have "
            f"{list(required)}, and a 'protocol' with 'majority_accuracy')."
        )
    return content


def _without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "filter_seconds"}


def _summarise(single: Sequence[Sequence[dict[str, Any]]], *, multi_seed: bool) -> list[dict[str, Any]]:
    """One run per setting from its single-seed runs: the run itself for one seed; otherwise the
    means (:func:`_mean_run`) and, for every defense, the paired differences from no defense."""
    if not multi_seed:
        return [{k: v for k, v in records[0].items() if k != "seed"} for records in single]
    undefended = next((records for records in single if records[0]["defense"] == "none"), None)
    runs = []
    for records in single:
        run = _mean_run(list(records))
        if undefended is not None and records is not undefended:
            run["vs_none"] = _paired_differences(records, undefended)
        runs.append(run)
    return runs


def _paired_differences(records: Sequence[Mapping[str, Any]], undefended: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each of :data:`PAIRED_KEYS`: the mean, standard error and number (``n``) of the seed-by-seed
    differences (setting - no defense) over the seeds where both have a value. Pairing removes what
    a seed does to both runs (which image is attacked, how well the model learns)."""
    baseline = {record["seed"]: record for record in undefended}
    out: dict[str, dict[str, Any]] = {}
    for key in PAIRED_KEYS:
        differences = [
            record[key] - baseline[record["seed"]][key]
            for record in records
            if record["seed"] in baseline and record[key] is not None and baseline[record["seed"]][key] is not None
        ]
        average, error = _mean_and_stderr(differences)
        out[key] = {"mean": average, "stderr": error, "n": len(differences)}
    return out


def _mean_and_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean (None for no values) and its standard error, sample std / sqrt(n) (None for fewer than two)."""
    mean = float(np.mean(values)) if values else None
    stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return mean, stderr


def _write_result(result: Mapping[str, Any], json_path: str | Path) -> None:
    """Write ``result`` to ``json_path`` and its runs to a CSV beside it (columns :data:`RUN_KEYS`)."""
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_KEYS, extrasaction="ignore")
        writer.writeheader()
        for run in result["runs"]:
            writer.writerow({**run, "params": json.dumps(run["params"])})


def _attack_budget(seconds: float | None, iterations: int | None, quick: bool) -> dict[str, Any]:
    """``AttackConfig`` budget fields: a fixed number of iterations per restart, or wall-clock seconds."""
    if iterations is None:
        return {"max_seconds": seconds or (30.0 if quick else 60.0)}
    if seconds is not None:
        raise ConfigError(
            f"run_defense_benchmark: give attack_seconds or attack_iterations, not both; got {seconds!r} and {iterations!r}."
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"run_defense_benchmark: attack_iterations must be an integer >= 1 or None, got {iterations!r}.")
    return {"max_iterations": iterations, "max_seconds": None}


def _mean_run(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One setting's runs over several seeds: the mean of every number (None values, from blocked
    updates, left out; None if all are), its standard error over the seeds under ``stderr``
    (sample standard deviation / sqrt(n); None with fewer than two values), the number of attacked
    updates over the seeds under ``audited_rounds``, and the single runs under ``per_seed``."""
    mean: dict[str, Any] = {"defense": per_seed[0]["defense"], "params": per_seed[0]["params"]}
    stderr: dict[str, float | None] = {}
    for key in RUN_KEYS[2:]:
        mean[key], stderr[key] = _mean_and_stderr([run[key] for run in per_seed if run[key] is not None])
    mean["stderr"] = stderr
    mean["audited_rounds"] = sum(run["audited_rounds"] for run in per_seed)
    mean["balanced_attacker_accuracy"] = _balanced_attacker_accuracy(per_seed)
    mean["per_seed"] = per_seed
    return mean


def _balanced_attacker_accuracy(per_seed: Sequence[Mapping[str, Any]]) -> float | None:
    """Attacker accuracy averaged per class of the attacked image, then over the classes.

    Each seed attacks one image of one class, so the plain mean over seeds depends on how many
    seeds drew each class: a reference classifier that calls every featureless reconstruction
    "pneumonia" scores the share of pneumonia seeds. Balancing puts such a classifier at 1 / (number
    of classes seen) whatever the mix. None when no seed has both an attacker accuracy and an
    ``attacked_label``."""
    by_class: dict[int, list[float]] = {}
    for run in per_seed:
        if run.get("attacker_accuracy") is not None and run.get("attacked_label") is not None:
            by_class.setdefault(int(run["attacked_label"]), []).append(float(run["attacker_accuracy"]))
    return float(np.mean([np.mean(values) for values in by_class.values()])) if by_class else None


def _learning_check(runs: Sequence[Mapping[str, Any]], spec: DataSpec) -> dict[str, Any]:
    """``majority_accuracy`` (accuracy of always predicting the test split's most common class) and
    ``model_learned`` (see :func:`_learned_check`)."""
    _, test_labels = load_test_data(spec)
    majority = float(np.bincount(test_labels).max() / len(test_labels)) if len(test_labels) else float("nan")
    return _learned_check(runs, majority)


def _learned_check(runs: Sequence[Mapping[str, Any]], majority: float) -> dict[str, Any]:
    """``majority_accuracy`` and ``model_learned`` (the undefended accuracy beats the majority class by
    :data:`LEARNED_MARGIN`); warns if not, since equal-utility picks then compare noise."""
    baseline = next((run["accuracy"] for run in runs if run["defense"] == "none"), None)
    learned = baseline is not None and baseline >= majority + LEARNED_MARGIN
    if not learned:
        logger.warning(
            "the undefended model reached accuracy %s, not %.2f above always predicting the majority class (%.3f): "
            "it did not learn, so equal-utility picks compare noise; use more rounds or --data where the model learns",
            "n/a" if baseline is None else f"{baseline:.3f}", LEARNED_MARGIN, majority,
        )
    return {"majority_accuracy": majority, "model_learned": learned}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _default_data() -> str:
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih_cxr1000_64.npz"
    return str(path) if path.is_file() else "synthetic"
