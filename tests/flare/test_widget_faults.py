"""The widget survives faults: one live simulator run with an injected fault per site.

One 2-round, 3-site FedAvg run (FLARE's real simulator, real chest X-rays) in which

* site-1's attack hangs in round 1 for ``HANG_SECONDS``, ignoring its ``max_seconds`` budget;
* site-2's attacks raise ``torch.cuda.OutOfMemoryError``;
* site-3's round-0 update arrives without its ``gia_training`` meta (FedAvg still aggregates it),
  and site-3's training raises in round 1 (it drops out; FedAvg ignores its error reply).

Every round must aggregate, the job must complete, each fault must be recorded in
``gia/metrics.jsonl`` with its reason, and the widget must add no more than ``end_run_wait_s``.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext

from nvflare_gia.attack import NUM_STEPS_META_KEY, TRAINING_META_KEY
from nvflare_gia.audit import AuditTarget
from nvflare_gia.data import DataSpec
from nvflare_gia.flare.jobs import prepare_job, run_simulator
from nvflare_gia.flare.widget import METRICS_FILE, GradientInversionWidget
from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig, train_local, training_meta

FAULTS = Path(__file__).parent / "fault_injection"
_spec = importlib.util.spec_from_file_location("faulty_widgets", FAULTS / "faulty_widgets.py")
faulty_widgets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faulty_widgets)
HANG_SECONDS = faulty_widgets.HANG_SECONDS

END_RUN_WAIT_S = 20.0
FAULTY_ATTACK = {"max_seconds": 4.0, "max_iterations": 40, "restarts": 1, "end_run_wait_s": END_RUN_WAIT_S}
SITES = ("site-1", "site-2", "site-3")


def make_faulty_job(destination: Path, nih_cxr_path: Path, widget_class: str, num_rounds: int = 2) -> Path:
    """``fedavg_cxr_audit`` attacking every site, with the fault hooks as custom code: the widget
    replaced by ``faulty_widgets.<widget_class>``, site-3 sending no training meta in round 0 and
    dropping out from round 1, and FedAvg ignoring a client's error reply."""
    job = prepare_job(
        "fedavg_cxr_audit",
        destination,
        num_rounds=num_rounds,
        data_spec=DataSpec(source=str(nih_cxr_path), max_train_images=64),
        component_args={"gia_widget": {**FAULTY_ATTACK, "clients": list(SITES)}},
    )
    custom = job / "app" / "custom"
    custom.mkdir()
    for module in ("faulty_widgets.py", "faulty_clients.py"):
        shutil.copy(FAULTS / module, custom)
    config_dir = job / "app" / "config"
    server = json.loads((config_dir / "config_fed_server.json").read_text())
    next(c for c in server["components"] if c["id"] == "gia_widget")["path"] = f"faulty_widgets.{widget_class}"
    server["workflows"][0]["args"]["ignore_result_error"] = True
    (config_dir / "config_fed_server.json").write_text(json.dumps(server, indent=4))
    client = json.loads((config_dir / "config_fed_client.json").read_text())
    client["executors"][0]["executor"]["path"] = "faulty_clients.DroppingOutExecutor"
    client["executors"][0]["executor"]["args"].update({"site": "site-3", "from_round": 1})
    client["task_result_filters"] = [
        {"tasks": ["train"], "filters": [{"path": "faulty_clients.DropTrainingMetaFilter", "args": {"site": "site-3", "rounds": [0]}}]}
    ]
    (config_dir / "config_fed_client.json").write_text(json.dumps(client, indent=4))
    meta = json.loads((job / "meta.json").read_text())
    meta["min_clients"] = 2
    (job / "meta.json").write_text(json.dumps(meta, indent=4))
    return job


def _records(run_dir: Path) -> dict[tuple[str, int], dict]:
    records: dict[tuple[str, int], dict] = {}
    for line in (run_dir / "gia" / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        key = (record["client"], record["round"])
        assert key not in records, f"two records for {key}: {records.get(key)} and {record}"
        records[key] = record
    return records


def _log_time(log: str, pattern: str) -> datetime.datetime:
    """Timestamp of the first server log line containing ``pattern``."""
    match = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*" + re.escape(pattern), log, flags=re.MULTILINE)
    assert match, f"no log line with {pattern!r}"
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, nih_cxr_path):
    root = tmp_path_factory.mktemp("faults")
    job = make_faulty_job(root / "job", nih_cxr_path, "HangingAndOutOfMemoryWidget")
    return run_simulator(job, root / "ws", clients=SITES, timeout_s=HANG_SECONDS)


@pytest.fixture(scope="module")
def server_log(faulty_run) -> str:
    return (faulty_run.workspace / "server" / "log.txt").read_text()


@pytest.mark.slow
def test_faulty_run_completes_and_aggregates_every_round(faulty_run, server_log):
    assert faulty_run.returncode == 0, faulty_run.log_tail
    assert "Finished FedAvg." in server_log
    round_0, rest = server_log.split("Round 1 started.")
    round_1 = rest.split("Finished FedAvg.")[0]
    assert "Aggregated 3/3 results" in round_0, "round 0: every site, the update without training meta included"
    assert "Aggregated 2/3 results" in round_1 and "Aggregated 3/3" not in round_1, "round 1: all but the dropped-out site-3"
    assert "Ignore the result from site-3" in round_1
    assert round_1.count("End persist model on server.") == 1, "round 1's aggregate must be saved"


@pytest.mark.slow
def test_hung_attack_is_abandoned_within_end_run_wait(faulty_run, server_log):
    record = _records(faulty_run.server_run_dir)[("site-1", 1)]
    assert record["gia/status"] == "not_finished", record
    assert f"end_run_wait_s={END_RUN_WAIT_S}" in record["reason"]
    # Structural bounds, not timings: the run ends long before the hang would, and the widget's wait
    # at the end of the run (first "waiting" line to its last line) stays near end_run_wait_s.
    assert faulty_run.seconds < HANG_SECONDS / 2, faulty_run.seconds
    waited = _log_time(server_log, "gradient inversion audit finished") - _log_time(server_log, "for pending attacks")
    assert waited.total_seconds() < END_RUN_WAIT_S + 30, waited


@pytest.mark.slow
def test_out_of_memory_in_attack_is_recorded_failed(faulty_run):
    records = _records(faulty_run.server_run_dir)
    assert records[("site-2", 0)]["gia/status"] == "failed"
    assert "OutOfMemoryError" in records[("site-2", 0)]["reason"]
    # Queued behind site-1's hung attack in round 1, site-2's second attack may never start.
    assert records[("site-2", 1)]["gia/status"] in ("failed", "not_finished"), records[("site-2", 1)]


@pytest.mark.slow
def test_update_without_training_meta_is_recorded_failed_and_others_attacked(faulty_run):
    records = _records(faulty_run.server_run_dir)
    malformed = records[("site-3", 0)]
    assert malformed["gia/status"] == "failed", malformed
    assert "gia_training" in malformed["reason"] and "num_images" in malformed["reason"], malformed["reason"]
    assert records[("site-1", 0)]["gia/status"] == "ok", records[("site-1", 0)]


@pytest.mark.slow
def test_dropped_out_site_is_recorded_missing(faulty_run):
    records = _records(faulty_run.server_run_dir)
    dropped = records[("site-3", 1)]
    assert dropped["gia/status"] == "missing", dropped
    assert "round 1" in dropped["reason"] and "no update was accepted" in dropped["reason"]


@pytest.mark.slow
def test_faulty_run_has_one_record_per_site_and_round(faulty_run):
    assert sorted(_records(faulty_run.server_run_dir)) == [(site, r) for site in SITES for r in (0, 1)]


# --------------------------------------------------------------- without FLARE running (fast)
class _BlockingWidget(GradientInversionWidget):
    """The attack blocks until released, ignoring its budget."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.release = threading.Event()

    def _run_attack(self, target):
        self.release.wait(60)
        return {"client": target.client, "round": target.round, "gia/status": "ok"}


def _offline_widget(widget: GradientInversionWidget, out: Path) -> GradientInversionWidget:
    widget._out = out  # what START_RUN sets up, without an engine (no TensorBoard streaming)
    widget._worker = threading.Thread(target=widget._work, daemon=True)
    widget._worker.start()
    return widget


def _offline_records(out: Path) -> list[dict]:
    path = out / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_hung_attack_is_recorded_not_finished_once_after_end_run_wait(tmp_path):
    widget = _offline_widget(_BlockingWidget(end_run_wait_s=0.5), tmp_path)
    widget._queue.put_nowait(AuditTarget("site-1", 0, {}, {}, {}))
    widget._queue.put_nowait(AuditTarget("site-2", 0, {}, {}, {}))
    started = time.monotonic()
    widget.handle_event(EventType.ABOUT_TO_END_RUN, FLContext())
    widget.handle_event(EventType.END_RUN, FLContext())
    assert time.monotonic() - started < 10, "END_RUN must not wait for a hung attack"
    widget.release.set()  # the hung attack ends after the run: its result must not be recorded too
    widget._worker.join(10)
    assert not widget._worker.is_alive()
    records = sorted((r["client"], r["gia/status"]) for r in _offline_records(tmp_path))
    assert records == [("site-1", "not_finished"), ("site-2", "not_finished")]


@pytest.mark.parametrize("parallel_restarts", [1, 2])
def test_end_run_stops_the_attack_in_flight(tmp_path, parallel_restarts):
    """An attack END_RUN gives up on stops at its next iteration: it must not go on using the CPU after
    the run, nor be inside torch when the server process exits (which aborts the process)."""
    torch.manual_seed(0)
    model = SmallCNN()
    global_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    image, config = torch.rand(1, 1, 16, 16), TrainingConfig()
    trained = copy.deepcopy(model)
    steps = train_local(trained, image, torch.tensor([1]), 1, config)
    update = {k: v.numpy() - global_state[k] for k, v in trained.state_dict().items()}
    meta = {NUM_STEPS_META_KEY: steps, TRAINING_META_KEY: training_meta(config, "small_cnn", image, 2, 1)}
    widget = GradientInversionWidget(
        max_seconds=900.0, max_iterations=10**8, restarts=2, parallel_restarts=parallel_restarts, end_run_wait_s=0.5,
        device="cpu", num_threads=1,
    )
    widget = _offline_widget(widget, tmp_path)
    widget._queue.put_nowait(AuditTarget("site-1", 0, global_state, update, meta))
    time.sleep(1.0)  # the attack is under way
    widget.handle_event(EventType.ABOUT_TO_END_RUN, FLContext())
    widget.handle_event(EventType.END_RUN, FLContext())
    widget._worker.join(120)  # the attack's budget is 900 s: only the stop request ends it this soon
    assert not widget._worker.is_alive()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("gia-restart")]
    assert [(r["client"], r["gia/status"]) for r in _offline_records(tmp_path)] == [("site-1", "not_finished")]


def test_worker_survives_a_record_that_cannot_be_written(tmp_path, monkeypatch):
    from nvflare_gia.flare import widget as widget_module

    real_append = widget_module.append_record
    calls = []

    def append_failing_once(path, record):
        calls.append(record["client"])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_append(path, record)

    monkeypatch.setattr(widget_module, "append_record", append_failing_once)
    widget = _offline_widget(_BlockingWidget(end_run_wait_s=10.0), tmp_path)
    widget.release.set()
    widget._queue.put_nowait(AuditTarget("site-1", 0, {}, {}, {}))
    widget._queue.put_nowait(AuditTarget("site-2", 0, {}, {}, {}))
    widget.handle_event(EventType.ABOUT_TO_END_RUN, FLContext())
    widget.handle_event(EventType.END_RUN, FLContext())
    assert calls == ["site-1", "site-2"]
    assert [(r["client"], r["gia/status"]) for r in _offline_records(tmp_path)] == [("site-2", "ok")]


def test_missing_records_name_clients_without_an_accepted_update(tmp_path):
    widget = _offline_widget(GradientInversionWidget(), tmp_path)
    widget._tasked = {0: {"site-1", "site-2", "site-3"}, 1: {"site-1", "site-2"}}
    widget._contributed = {0: {"site-1", "site-2", "site-3"}, 1: {"site-1"}}
    widget.handle_event(EventType.END_RUN, FLContext())
    records = {(r["client"], r["round"]): r for r in _offline_records(tmp_path)}
    assert sorted(records) == [("site-2", 1), ("site-3", 1)]
    assert all(r["gia/status"] == "missing" for r in records.values())
    assert "sent the train task of round 1 but no update was accepted" in records[("site-2", 1)]["reason"]
    assert "not sent the train task of round 1" in records[("site-3", 1)]["reason"]


def test_missing_records_cover_configured_clients_never_seen(tmp_path):
    widget = _offline_widget(GradientInversionWidget(clients=["site-1", "site-9"]), tmp_path)
    widget._tasked = {0: {"site-1", "site-2"}, 1: {"site-1", "site-2"}}
    widget._contributed = {0: {"site-1"}, 1: {"site-1"}}
    widget.handle_event(EventType.END_RUN, FLContext())
    records = sorted((r["client"], r["round"], r["gia/status"]) for r in _offline_records(tmp_path))
    assert records == [("site-9", 0, "missing"), ("site-9", 1, "missing")]


class _FakeEngine:
    """What START_RUN needs of the server engine: a workspace (``root/startup`` and ``root/local``)."""

    def __init__(self, root: Path) -> None:
        from nvflare.apis.workspace import Workspace

        for name in ("startup", "local"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(str(root))

    def get_workspace(self):
        return self.workspace

    def new_context(self):
        raise RuntimeError("no streaming in this test")


def _server_context(engine=None) -> FLContext:
    from nvflare.apis.fl_context import FLContextManager

    return FLContextManager(engine=engine, identity_name="server", job_id="job").new_context()


def _deliver(widget: GradientInversionWidget, fl_ctx: FLContext, client: str, global_state: dict, result_dxo) -> None:
    """BEFORE_TRAIN_TASK with round 0's global model, then AFTER_CONTRIBUTION_ACCEPT with ``client``'s result."""
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContextManager
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_common.app_event_type import AppEventType

    fl_ctx.set_peer_context(FLContextManager(engine=None, identity_name=client, job_id="job").new_context())
    task = DXO(DataKind.WEIGHTS, global_state).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    fl_ctx.set_prop(AppConstants.TRAIN_SHAREABLE, task, private=True, sticky=False)
    widget.handle_event(AppEventType.BEFORE_TRAIN_TASK, fl_ctx)
    result = result_dxo.to_shareable()
    result.set_header(AppConstants.CURRENT_ROUND, 0)
    result.set_peer_props({ReservedKey.IDENTITY_NAME: client})
    fl_ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
    widget.handle_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, fl_ctx)


def _odd_results():
    from nvflare.apis.dxo import DXO, DataKind

    meta = {"gia_training": {"num_images": 4, "batch_size": 4}}
    return {
        "site-1": DXO(DataKind.WEIGHTS, {"w": np.zeros((3, 2), np.float32)}, meta),  # shape differs from the global model
        "site-2": DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros((2, 3), np.float32)}, {"gia_training": "4 images"}),  # meta not a mapping
    }


def test_malformed_update_is_recorded_failed_not_lost(tmp_path):
    widget = _offline_widget(_BlockingWidget(end_run_wait_s=0.5), tmp_path)
    fl_ctx = _server_context()
    for client, dxo in _odd_results().items():
        _deliver(widget, fl_ctx, client, {"w": np.zeros((2, 3), np.float32)}, dxo)
    assert widget._queue.empty()
    records = {r["client"]: r for r in _offline_records(tmp_path)}
    assert sorted(records) == ["site-1", "site-2"]
    assert all(r["gia/status"] == "failed" and r["round"] == 0 and r["reason"] for r in records.values())
    widget.release.set()


def test_bfloat16_update_and_global_model_are_queued_for_the_attack(tmp_path):
    from nvflare.apis.dxo import DXO, DataKind

    widget = _offline_widget(_BlockingWidget(end_run_wait_s=0.5), tmp_path)
    global_state = {"w": torch.zeros((2, 3), dtype=torch.bfloat16)}
    update = DXO(DataKind.WEIGHTS, {"w": torch.ones((2, 3), dtype=torch.bfloat16)}, {"gia_training": {"num_images": 1}})
    _deliver(widget, _server_context(), "site-1", global_state, update)
    assert _offline_records(tmp_path) == []  # neither skipped (no cached global model) nor failed
    with widget._lock:
        target = widget._in_progress or widget._queue.get_nowait()
    widget.release.set()
    assert target.global_state["w"].dtype == np.float32 and np.array_equal(target.global_state["w"], np.zeros((2, 3), np.float32))
    assert target.update["w"].dtype == np.float32 and np.array_equal(target.update["w"], np.ones((2, 3), np.float32))


def test_update_after_a_failed_start_run_is_recorded_failed_and_nothing_is_left_pending(tmp_path):
    from nvflare.apis.dxo import DXO, DataKind

    widget = GradientInversionWidget(audit=True)  # the app has no gia_data.json: START_RUN cannot load the data spec
    fl_ctx = _server_context(_FakeEngine(tmp_path))
    widget.handle_event(EventType.START_RUN, fl_ctx)
    update = DXO(DataKind.WEIGHT_DIFF, {"w": np.ones((2, 3), np.float32)}, {"gia_training": {"num_images": 1, "batch_size": 1}})
    _deliver(widget, fl_ctx, "site-1", {"w": np.zeros((2, 3), np.float32)}, update)
    assert not widget._pending(), "no worker runs: END_RUN must not wait end_run_wait_s for a queued update"
    out = Path(tmp_path) / "job" / "gia"
    records = _offline_records(out)
    assert [(r["client"], r["gia/status"]) for r in records] == [("site-1", "failed")]
    assert "gia_data.json" in records[0]["reason"]
    widget.handle_event(EventType.END_RUN, fl_ctx)
    assert [r["gia/status"] for r in _offline_records(out)] == ["failed"]
