"""GradientInversionWidget in FLARE's real simulator on the real chest X-rays."""

from __future__ import annotations

import inspect
import io
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nvflare_gia.attack import AttackConfig
from nvflare_gia.data import DataSpec
from nvflare_gia.defenses.self_audit import LeakageGateConfig, SelfAuditConfig
from nvflare_gia.flare.audit_filters import LeakageGateFilter
from nvflare_gia.flare.jobs import prepare_job, read_tb_scalars, run_simulator
from nvflare_gia.flare.widget import METRICS_FILE, GradientInversionWidget
from nvflare_gia.errors import ConfigError

FAST_ATTACK = {"max_seconds": 4.0, "max_iterations": 40, "restarts": 1, "end_run_wait_s": 60.0, "prior": "val_retrieval"}
ATTACKED = ("site-1", "site-2")


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "gia" / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_audit_job(root: Path, nih_cxr_path: Path, with_widget: bool):
    """``fedavg_cxr_audit``, 2 rounds, aggregated independently of the clients' reply order.

    FedAvg's InTime aggregation sums results in arrival order, and float32 addition is not
    associative; the order-free aggregator lets two runs be compared bit for bit.
    """
    job = prepare_job(
        "fedavg_cxr_audit",
        root / "job",
        num_rounds=2,
        data_spec=DataSpec(source=str(nih_cxr_path)),
        component_args={"gia_widget": FAST_ATTACK},
    )
    (job / "app" / "custom").mkdir()
    shutil.copy(Path(__file__).parent / "custom" / "order_free_mean.py", job / "app" / "custom")
    server_config = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(server_config.read_text())
    config["workflows"][0]["args"]["aggregator"] = {"path": "order_free_mean.OrderFreeMean", "args": {}}
    if not with_widget:
        config["components"] = [c for c in config["components"] if c["id"] != "gia_widget"]
    server_config.write_text(json.dumps(config))
    return run_simulator(job, root / "ws", timeout_s=600)


@pytest.fixture(scope="module")
def audit_run(tmp_path_factory, nih_cxr_path):
    return _run_audit_job(tmp_path_factory.mktemp("audit"), nih_cxr_path, with_widget=True)


@pytest.fixture(scope="module")
def no_widget_run(tmp_path_factory, nih_cxr_path):
    return _run_audit_job(tmp_path_factory.mktemp("no_widget"), nih_cxr_path, with_widget=False)


@pytest.mark.slow
def test_widget_writes_metrics_and_images_for_each_selected_client_and_round(audit_run):
    assert audit_run.returncode == 0, audit_run.log_tail
    records = _records(audit_run.server_run_dir)
    assert sorted((r["client"], r["round"]) for r in records) == [(c, r) for c in ATTACKED for r in (0, 1)]
    for record in records:
        assert record["gia/status"] == "ok", record
        for key in (
            "gia/ssim", "gia/psnr", "gia/mse", "gia/rdlv", "gia/prior_ssim", "gia/label_accuracy", "gia/update_residual",
            "gia/matching_loss", "gia/truth_matching_loss",
        ):
            assert np.isfinite(record[key]), key
        with np.load(record["files"]["npz"]) as saved:
            assert saved["reconstruction"].shape == saved["truth"].shape == (record["num_images"], 1, 64, 64)
        # prior="val_retrieval": the one-image site's prior is drawn from the validation split
        if record["num_images"] == 1:
            assert AttackConfig.retrieval_k <= record["gia/retrieval_ranked"] <= 200  # the NIH val split
        else:
            assert "gia/retrieval_ranked" not in record
        with Image.open(record["files"]["png"]) as grid:
            assert grid.format == "PNG" and grid.size[1] > 2 * 64


@pytest.mark.slow
def test_widget_outputs_are_owner_only(audit_run):
    out = audit_run.server_run_dir / "gia"
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


@pytest.mark.slow
def test_widget_streams_leakage_scalars_per_site_to_tensorboard(audit_run):
    scalars = read_tb_scalars(audit_run.server_run_dir)
    for client in ATTACKED:
        assert sorted(dict(scalars[f"gia/{client}/ssim"])) == [0, 1]
        assert dict(scalars[f"gia/{client}/status"]) == {0: 1.0, 1: 1.0}


@pytest.mark.slow
def test_widget_streams_reconstruction_grids_to_tensorboard(audit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grids: dict[str, dict[int, bytes]] = {}
    for event_file in sorted(audit_run.server_run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file.parent), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("images", []):
            grids.setdefault(tag, {}).update({int(e.step): e.encoded_image_string for e in accumulator.Images(tag)})
    records = {(r["client"], r["round"]): r for r in _records(audit_run.server_run_dir)}
    for client in ATTACKED:
        assert sorted(grids[f"gia/{client}/reconstruction"]) == [0, 1]
        for round_index, encoded in grids[f"gia/{client}/reconstruction"].items():
            with Image.open(io.BytesIO(encoded)) as logged, Image.open(records[(client, round_index)]["files"]["png"]) as saved:
                assert np.array_equal(np.asarray(logged.convert("L")), np.asarray(saved.convert("L")))


@pytest.mark.slow
def test_widget_does_not_change_the_aggregated_model(audit_run, no_widget_run, load_global_model):
    assert no_widget_run.returncode == 0, no_widget_run.log_tail
    assert not (no_widget_run.server_run_dir / "gia").exists()
    with_widget = load_global_model(audit_run.server_run_dir)
    without_widget = load_global_model(no_widget_run.server_run_dir)
    assert sorted(with_widget) == sorted(without_widget)
    for key in without_widget:
        torch.testing.assert_close(with_widget[key].double(), without_widget[key].double(), rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_attack_exception_does_not_fail_the_job(tmp_path, nih_cxr_path):
    job = prepare_job(
        "fedavg_cxr_audit", tmp_path / "job", num_rounds=1, data_spec=DataSpec(source=str(nih_cxr_path)), component_args={"gia_widget": FAST_ATTACK}
    )
    custom = job / "app" / "custom"
    custom.mkdir()
    shutil.copy(Path(__file__).parent / "fault_injection" / "faulty_widgets.py", custom)
    server_config = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(server_config.read_text())
    widget = next(c for c in config["components"] if c["id"] == "gia_widget")
    widget["path"] = "faulty_widgets.RaisingAttackWidget"
    server_config.write_text(json.dumps(config))
    run = run_simulator(job, tmp_path / "ws", timeout_s=600)
    assert run.returncode == 0, run.log_tail
    server_log = (run.workspace / "server" / "log.txt").read_text()
    assert server_log.count("Aggregated 3/3 results") == 1 and "Finished FedAvg." in server_log
    records = _records(run.server_run_dir)
    assert {r["client"] for r in records} == set(ATTACKED)
    assert all(r["gia/status"] == "failed" and "injected attack failure" in r["reason"] for r in records)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clients": []}, "clients must be None or a non-empty list"),
        ({"frequency": 0}, "frequency must be an integer >= 1"),
        ({"max_seconds": 0}, "max_seconds must be a number > 0"),
        ({"prior": "mean"}, r"prior must be one of \['flat', 'val_mean', 'val_retrieval'\]"),
        ({"output_dir": "../x"}, "output_dir must be a relative folder"),
        ({"objective": "l3"}, "objective"),
        ({"parallel_restarts": 0}, "parallel_restarts must be an integer >= 1"),
        ({"networks": ["my_networks.Net"]}, r"networks entry 'my_networks.Net': module 'my_networks' does not import"),
        ({"networks": ["smallcnn"]}, r"networks entry must be one of \['small_cnn', .*\] or the dotted path .*Did you mean 'small_cnn'"),
    ],
)
def test_widget_rejects_bad_arguments_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GradientInversionWidget(**kwargs)


def test_widget_and_client_self_audits_skip_the_same_clients_by_default():
    """A client above the widget's max_images is not attacked on the server; the self-audit and the
    gate must then not audit it either (and vice versa), so their defaults are one constant."""
    widget = GradientInversionWidget()
    assert widget.max_images == SelfAuditConfig().max_images == LeakageGateConfig().max_images
    assert widget.max_images == inspect.signature(LeakageGateFilter).parameters["max_images"].default
