"""Server-side FLARE widget that runs the gradient inversion attack on every received update."""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.analytix import AnalyticsDataType
from nvflare.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.widget import Widget

from nvflare_gia.attack import DEFAULT_MAX_IMAGES, AttackConfig, GradientInversionAttack, check_prior_name, prior_from_validation
from nvflare_gia.audit import AuditTarget, append_record, audit_update, make_private_dir
from nvflare_gia.defenses._update import to_numpy
from nvflare_gia.errors import ConfigError
from nvflare_gia.models import resolve_model_name

__all__ = ["GradientInversionWidget", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"
# How long END_RUN, after end_run_wait_s, waits for the attack in flight to stop at its next
# iteration (about 0.4 s for ResNet-18 at batch 4 on a CPU core), so the server does not exit while
# the worker is inside torch (which aborts the process); a hung attack is left behind after it.
STOP_GRACE_S = 2.0


def _to_numpy(value: Any) -> np.ndarray:
    return np.array(to_numpy(value), copy=True)  # torch bfloat16 (no NumPy twin) becomes float32


def _copy_arrays(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {str(k): _to_numpy(v) for k, v in data.items()}


class GradientInversionWidget(Widget):
    """Attack each selected client's update on the server and record how much it leaks.

    On ``BEFORE_TRAIN_TASK`` it caches the global model of the round; on
    ``AFTER_CONTRIBUTION_ACCEPT`` it copies the client's update and queues it; a worker thread runs
    :class:`~nvflare_gia.attack.GradientInversionAttack` off the aggregation path, within a time
    budget per attack. Nothing it does raises into FLARE: failures are logged and recorded as
    ``gia/status`` = ``failed``/``skipped``/``not_finished`` with a reason. At the end of the run it
    waits for queued attacks at most ``end_run_wait_s`` seconds in all (an attack that hangs past its
    budget is abandoned and recorded ``not_finished``), and records ``gia/status`` = ``missing`` for
    every selected client and round without an accepted update: a client that was sent the round's
    task but dropped out or replied with an error, or a client seen in an earlier round (or named in
    ``clients``) that was not sent the task at all.

    Outputs (owner-only, inside the server's run directory ``<run_dir>/<output_dir>/``):
    ``metrics.jsonl`` (one JSON line per client and round), ``<client>/round_<r>/reconstruction.npz``
    and ``grid.png`` (truth above reconstruction in audit mode), and TensorBoard scalars
    ``gia/<client>/<metric>`` through FLARE's analytics streaming (add a ``TBAnalyticsReceiver`` that
    listens to ``analytix_log_stats``). Reconstructions are patient data: they never leave the server.

    Args:
        clients: client names to attack; None attacks every client.
        start_round: first round to attack.
        frequency: attack every ``frequency``-th round from ``start_round``.
        max_images: skip clients that trained on more images than this (the attack optimises one
            dummy image per local image).
        max_seconds: wall-clock budget of one attack.
        max_iterations: iteration budget of one attack.
        restarts: attack restarts, combined as ``AttackConfig.restart_selection`` says (their
            consensus by default).
        objective: update-matching objective (see ``nvflare_gia.attack.OBJECTIVES``).
        seed: attack seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        prior: ``flat`` (gray 0.5), ``val_mean`` (mean image of the data spec's validation split,
            which is not any site's training data; the attack starts from it) or ``val_retrieval``
            (the validation images are the attack's candidates: for a one-image update the mean of
            those whose updates fit it best is the prior, otherwise the validation mean; RDLV is
            still measured against the validation mean).
        audit: score reconstructions against each client's true training images, read through the
            job's data spec (``data_spec_file``): simulator and POC on one machine only.
        data_spec_file: the job's data spec, relative to the app's config folder.
        queue_size: updates waiting for the worker; more are skipped and recorded.
        end_run_wait_s: how long ``END_RUN`` waits for pending attacks; then the attack in flight
            is told to stop at its next iteration (``END_RUN`` waits up to ``STOP_GRACE_S`` more for
            it) and what did not finish is recorded ``not_finished``.
        output_dir: folder under the run directory.
        num_threads: torch threads of the attack; None leaves torch's setting.
        parallel_restarts: restarts optimised at once, each on its own thread (see
            ``AttackConfig.parallel_restarts``): on a server with idle cores, set it to their number
            with ``num_threads=1``.
        tensorboard_images: also stream each reconstruction grid (truth above reconstruction in
            audit mode) as a TensorBoard image ``gia/<site>/reconstruction``. The server's
            TensorBoard event files then hold patient images: keep them as private as the run
            directory, or set this to false.
        networks: dotted paths of the job's own networks (factories in its ``app/custom`` folder,
            see :func:`nvflare_gia.models.build_model`) that clients may name as their ``model``;
            an update naming any other path is recorded failed, the path never imported (the
            meta is the client's word). The built-in networks are always accepted.

    Raises:
        ConfigError: for an argument outside its allowed values (at construction, i.e. deploy time).
    """

    def __init__(
        self,
        clients: list[str] | None = None,
        start_round: int = 0,
        frequency: int = 1,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_seconds: float = 60.0,
        max_iterations: int = AttackConfig.max_iterations,
        restarts: int = AttackConfig.restarts,
        objective: str = AttackConfig.objective,
        seed: int = AttackConfig.seed,
        device: str = AttackConfig.device,
        prior: str = "flat",
        audit: bool = False,
        data_spec_file: str = "gia_data.json",
        queue_size: int = 16,
        end_run_wait_s: float = 300.0,
        output_dir: str = "gia",
        num_threads: int | None = None,
        parallel_restarts: int = AttackConfig.parallel_restarts,
        tensorboard_images: bool = True,
        networks: list[str] | None = None,
    ) -> None:
        super().__init__()
        if clients is not None and (
            not isinstance(clients, (list, tuple)) or not clients or not all(isinstance(c, str) and c for c in clients)
        ):
            raise ConfigError(f"GradientInversionWidget: clients must be None or a non-empty list of names, got {clients!r}.")
        for name, value, minimum in (
            ("start_round", start_round, 0),
            ("frequency", frequency, 1),
            ("max_images", max_images, 1),
            ("queue_size", queue_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"GradientInversionWidget: {name} must be an integer >= {minimum}, got {value!r}.")
        for name, value in (("max_seconds", max_seconds), ("end_run_wait_s", end_run_wait_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"GradientInversionWidget: {name} must be a number > 0, got {value!r}.")
        if not isinstance(audit, bool):
            raise ConfigError(f"GradientInversionWidget: audit must be true or false, got {audit!r}.")
        if not isinstance(tensorboard_images, bool):
            raise ConfigError(f"GradientInversionWidget: tensorboard_images must be true or false, got {tensorboard_images!r}.")
        if not isinstance(data_spec_file, str) or not data_spec_file.strip():
            raise ConfigError(f"GradientInversionWidget: data_spec_file must be a non-empty file name, got {data_spec_file!r}.")
        check_prior_name("GradientInversionWidget", prior)
        if networks is not None and (not isinstance(networks, (list, tuple)) or not all(isinstance(n, str) for n in networks)):
            raise ConfigError(f"GradientInversionWidget: networks must be None or a list of dotted network paths, got {networks!r}.")
        for network in networks or ():
            resolve_model_name(network, owner="GradientInversionWidget", arg="networks entry")
        if not isinstance(output_dir, str) or not output_dir or Path(output_dir).is_absolute() or ".." in Path(output_dir).parts:
            raise ConfigError(f"GradientInversionWidget: output_dir must be a relative folder name inside the run directory, got {output_dir!r}.")
        self.clients = clients
        self.start_round = start_round
        self.frequency = frequency
        self.max_images = max_images
        self.max_seconds = max_seconds
        self.max_iterations = max_iterations
        self.restarts = restarts
        self.objective = objective
        self.seed = seed
        self.device = device
        self.prior = prior
        self.audit = audit
        self.data_spec_file = data_spec_file
        self.queue_size = queue_size
        self.end_run_wait_s = end_run_wait_s
        self.output_dir = output_dir
        self.num_threads = num_threads
        self.parallel_restarts = parallel_restarts
        self.tensorboard_images = tensorboard_images
        self.networks = networks
        self._attack = GradientInversionAttack(
            AttackConfig(
                max_seconds=max_seconds,
                max_iterations=max_iterations,
                restarts=restarts,
                objective=objective,
                seed=seed,
                device=device,
                num_threads=num_threads,
                parallel_restarts=parallel_restarts,
                init="noise" if prior == "flat" else "prior",
            ),
            should_stop=self._run_ending,
        )
        self._reset()

    def _run_ending(self) -> bool:
        """True once END_RUN gave up on pending attacks: the attack in flight stops at its next iteration."""
        return self._stopping.is_set()

    def _reset(self) -> None:
        self._global_models: dict[int, dict[str, np.ndarray]] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._out: Path | None = None
        self._engine = None
        self._data_spec = None
        self._prior_image: np.ndarray | None = None
        self._candidates: np.ndarray | None = None
        self._in_progress: AuditTarget | None = None
        self._lock = threading.Lock()  # orders the worker's last record against END_RUN's leftovers
        self._recording = False  # the worker is writing the in-progress target's record
        self._tasked: dict[int, set[str]] = {}  # selected round -> clients sent its train task
        self._contributed: dict[int, set[str]] = {}  # selected round -> clients whose update was accepted
        self._missing_reported = False
        self._drain_deadline: float | None = None
        self._start_error: str | None = None  # why START_RUN could not start the worker

    # ----------------------------------------------------------------- events
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Dispatch FLARE events; never raises."""
        try:
            if event_type == EventType.START_RUN:
                self._start(fl_ctx)
            elif event_type == AppEventType.BEFORE_TRAIN_TASK:
                self._cache_global_model(fl_ctx)
            elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
                self._enqueue(fl_ctx)
            elif event_type == EventType.ABOUT_TO_END_RUN:
                self._drain(fl_ctx)
            elif event_type == EventType.END_RUN:
                self._finish(fl_ctx)
        except Exception as e:  # the widget must never break the run
            self.log_exception(fl_ctx, f"GradientInversionWidget: {event_type} handling failed: {e!r}")

    def _start(self, fl_ctx: FLContext) -> None:
        self._reset()
        try:
            self._set_up(fl_ctx)
        except Exception as e:  # no worker: updates are recorded failed with this reason, not queued
            self._start_error = repr(e)
            raise
        self._worker = threading.Thread(target=self._work, name="gia-attack-worker", daemon=True)
        self._worker.start()
        self.log_info(fl_ctx, f"gradient inversion audit on; outputs in {self._out}")

    def _set_up(self, fl_ctx: FLContext) -> None:
        self._engine = fl_ctx.get_engine()
        workspace = self._engine.get_workspace()
        job_id = fl_ctx.get_job_id()
        self._out = make_private_dir(Path(workspace.get_run_dir(job_id)) / self.output_dir)
        if self.audit or self.prior != "flat":
            from nvflare_gia.data import DataSpec, load_splits

            self._data_spec = DataSpec.from_json(str(Path(workspace.get_app_config_dir(job_id)) / self.data_spec_file))
            if self.prior != "flat":
                self._prior_image, self._candidates = prior_from_validation(self.prior, load_splits(self._data_spec).val_images)
            if self.clients is not None:
                unknown = sorted(set(self.clients) - set(self._data_spec.site_names))
                if unknown:
                    self.log_warning(fl_ctx, f"clients {unknown} are not in the data spec's site_names {list(self._data_spec.site_names)}")

    def _cache_global_model(self, fl_ctx: FLContext) -> None:
        shareable = fl_ctx.get_prop(AppConstants.TRAIN_SHAREABLE)
        if not isinstance(shareable, Shareable):
            return
        round_index = self._round_of(shareable, fl_ctx)
        if not self._selected_round(round_index):
            return
        peer = fl_ctx.get_peer_context()
        client = peer.get_identity_name() if peer is not None else None
        if client:
            self._tasked.setdefault(round_index, set()).add(client)
        if round_index in self._global_models:
            return
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            self.log_warning(fl_ctx, f"round {round_index}: global model of kind {dxo.data_kind} not cached")
            return
        self._global_models = {round_index: _copy_arrays(dxo.data)}  # one round in flight under FedAvg

    @staticmethod
    def _round_of(shareable: Shareable, fl_ctx: FLContext) -> int:
        value = shareable.get_header(AppConstants.CURRENT_ROUND)
        if value is None:
            value = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        return int(value)

    def _selected_round(self, round_index: int) -> bool:
        return round_index >= self.start_round and (round_index - self.start_round) % self.frequency == 0

    def _enqueue(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
        if not isinstance(result, Shareable):
            return
        client = result.get_peer_prop(ReservedKey.IDENTITY_NAME, None) or fl_ctx.get_peer_context().get_identity_name()
        round_index = self._round_of(result, fl_ctx)
        if (self.clients is not None and client not in self.clients) or not self._selected_round(round_index):
            return
        self._contributed.setdefault(round_index, set()).add(client)
        record = {"client": client, "round": round_index}
        try:
            target = self._target(result, record)
        except Exception as e:  # recorded, never raised: the update must not vanish from the metrics
            self.log_warning(fl_ctx, f"update of {client} round {round_index} not attacked: malformed update: {e!r}")
            self._record({**record, "gia/status": "failed", "reason": f"malformed update: {e!r}"})
            return
        if target is None:
            return
        if self._worker is None or not self._worker.is_alive():
            self._record({**record, "gia/status": "failed", "reason": f"the attack worker is not running (START_RUN failed: {self._start_error})"})
            return
        try:
            self._queue.put_nowait(target)
        except queue.Full:
            self._record({**record, "gia/status": "skipped", "reason": f"attack queue full ({self.queue_size})"})

    def _target(self, result: Shareable, record: dict[str, Any]) -> AuditTarget | None:
        """The attack target of ``result``, or None after recording why it is skipped; raises for a malformed update."""
        client, round_index = record["client"], record["round"]
        global_state = self._global_models.get(round_index)
        dxo = from_shareable(result)
        if global_state is None:
            self._record({**record, "gia/status": "skipped", "reason": "no cached global model for this round"})
            return None
        num_images = (dxo.meta.get("gia_training") or {}).get("num_images")
        if isinstance(num_images, int) and num_images > self.max_images:
            self._record({**record, "gia/status": "skipped", "reason": f"{num_images} local images > max_images={self.max_images}"})
            return None
        if dxo.data_kind == DataKind.WEIGHT_DIFF:
            update = _copy_arrays(dxo.data)
        elif dxo.data_kind == DataKind.WEIGHTS:
            update = {k: _to_numpy(v) - global_state[k] for k, v in dxo.data.items() if k in global_state}
        else:
            self._record({**record, "gia/status": "skipped", "reason": f"data kind {dxo.data_kind} carries no model update"})
            return None
        return AuditTarget(client, round_index, global_state, update, copy.deepcopy(dict(dxo.meta)))

    # ----------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            with self._lock:  # taking a target and marking it in progress is one step for END_RUN
                if self._stopping.is_set():
                    return
                try:
                    target = self._queue.get_nowait()
                except queue.Empty:
                    target = None
                self._in_progress = target
            if target is None:
                self._stopping.wait(0.1)
                continue
            try:
                record = self._run_attack(target)
            except Exception as e:  # recorded, never raised
                logging.getLogger(__name__).exception("attack on %s round %d failed", target.client, target.round)
                record = {"client": target.client, "round": target.round, "gia/status": "failed", "reason": repr(e)}
            with self._lock:
                abandoned = self._stopping.is_set()  # END_RUN gave up on it and recorded it not_finished
                self._recording = not abandoned
            if abandoned:
                logging.getLogger(__name__).warning("attack on %s round %d ended after the run's end; result dropped", target.client, target.round)
                return
            try:
                self._record(record)  # outside the lock: streaming fires FLARE events
            except Exception:  # e.g. a full disk: logged, and the worker goes on with the next update
                logging.getLogger(__name__).exception("could not record the attack on %s round %d", target.client, target.round)
            finally:
                with self._lock:
                    self._in_progress, self._recording = None, False

    def _run_attack(self, target: AuditTarget) -> dict[str, Any]:
        truth = None
        if self.audit and self._data_spec is not None:
            from nvflare_gia.data import load_site_data

            truth = load_site_data(self._data_spec, target.client)
        folder = self._out / target.client / f"round_{target.round}"
        return audit_update(
            target, self._attack, networks=self.networks or (), truth=truth, prior=self._prior_image, candidates=self._candidates, output_dir=folder
        )

    # ----------------------------------------------------------------- output
    def _record(self, record: dict[str, Any]) -> None:
        if self._out is None:
            return
        record = {**record, "time": time.time()}
        append_record(self._out / METRICS_FILE, record)
        self._stream(record)

    def _stream(self, record: dict[str, Any]) -> None:
        if self._engine is None:
            return
        status_value = {"ok": 1.0, "skipped": 0.0, "failed": -1.0, "not_finished": -2.0, "missing": -3.0}.get(record.get("gia/status"), -1.0)
        scalars = {"status": status_value}
        scalars.update(
            {key.split("/", 1)[1]: float(v) for key, v in record.items() if key.startswith("gia/") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        try:
            with self._engine.new_context() as fl_ctx:
                for name, value in scalars.items():
                    if not np.isfinite(value):
                        continue
                    dxo = create_analytic_dxo(
                        tag=f"gia/{record['client']}/{name}", value=value, data_type=AnalyticsDataType.SCALAR, global_step=int(record["round"])
                    )
                    send_analytic_dxo(self, dxo, fl_ctx)
                grid = (record.get("files") or {}).get("png")
                if self.tensorboard_images and grid:
                    with Image.open(grid) as png:
                        pixels = np.asarray(png.convert("L"))
                    dxo = create_analytic_dxo(
                        tag=f"gia/{record['client']}/reconstruction", value=pixels, data_type=AnalyticsDataType.IMAGE, global_step=int(record["round"])
                    )
                    send_analytic_dxo(self, dxo, fl_ctx)
        except Exception:
            logging.getLogger(__name__).exception("could not stream leakage metrics to TensorBoard")

    def _drain(self, fl_ctx: FLContext) -> None:
        # Wait here, before END_RUN, so the last metrics still reach receivers that close at END_RUN.
        # One deadline for the whole run: ABOUT_TO_END_RUN and END_RUN together wait at most end_run_wait_s.
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.end_run_wait_s
        self._record_missing()
        deadline = self._drain_deadline
        if self._pending():
            self.log_info(fl_ctx, f"waiting up to {self.end_run_wait_s:.0f} s for pending attacks")
        while self._pending() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _pending(self) -> bool:
        with self._lock:
            return not self._queue.empty() or self._in_progress is not None

    def _record_missing(self) -> None:
        """Record ``missing`` for each selected client and started round without an accepted update (once)."""
        if self._missing_reported:
            return
        self._missing_reported = True
        known: set[str] = set(self.clients or ())
        for round_index in sorted(self._tasked):
            tasked = self._tasked[round_index]
            expected = tasked | known
            if self.clients is not None:
                expected &= set(self.clients)
            for client in sorted(expected - self._contributed.get(round_index, set())):
                if client in tasked:
                    reason = f"sent the train task of round {round_index} but no update was accepted (dropped out, timed out or replied with an error)"
                else:
                    reason = f"not sent the train task of round {round_index} (disconnected, or not sampled by the workflow)"
                self._record({"client": client, "round": round_index, "gia/status": "missing", "reason": reason})
            known |= tasked

    def _finish(self, fl_ctx: FLContext) -> None:
        self._drain(fl_ctx)
        with self._lock:
            self._stopping.set()
            leftovers = []
            while True:
                try:
                    leftovers.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._in_progress is not None and not self._recording:
                leftovers.append(self._in_progress)
            worker = self._worker
        if worker is not None:  # the attack in flight stops at its next iteration; a hung one is left behind
            worker.join(STOP_GRACE_S)
        for target in leftovers:
            self._record(
                {"client": target.client, "round": target.round, "gia/status": "not_finished", "reason": f"still pending after end_run_wait_s={self.end_run_wait_s}"}
            )
        self.log_info(fl_ctx, f"gradient inversion audit finished; metrics in {self._out / METRICS_FILE if self._out else None}")
