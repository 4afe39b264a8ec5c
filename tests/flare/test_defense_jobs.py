"""Each defense job, run in FLARE's simulator, lowers what the server's attack recovers.

The audit job (no defense), three of the four defense jobs and the calibrated job run one round with the same seeds on the
real chest X-rays; the widget attacks the high-risk site (one image, batch 1) with the same
iteration budget, so the only difference between the runs is the client's result filter. It starts
from the flat prior, so the SSIM is what the update gives: from the jobs' retrieved validation prior
both the undefended and the Gaussian run ended at the prior's SSIM (0.581 and 0.581, 2026-12-05).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvflare_gia.data import DataSpec
from nvflare_gia.flare.jobs import prepare_job, run_simulator
from nvflare_gia.flare.widget import METRICS_FILE

HIGH_RISK_SITE = "site-1"
# Not the Gaussian job: its sigma0 1.0 left the flat-prior attack at SSIM 0.313 against 0.325 undefended in
# one run and 0.306 in another (2026-12-05), 0.322 against 0.303 with the widget on one thread (2026-12-06);
# the README says it is a baseline, not a defense to rely on.
DEFENSE_JOBS = ("fedavg_cxr_laplacian", "fedavg_cxr_shadow", "fedavg_cxr_latent")
# An iteration budget (with a time budget far above it) makes every run's attack deterministic. Three
# restarts, not one: one restart's SSIM swings with its start and with the last bits of the arithmetic.
# With one restart Laplacian b = 1e-3 gave 0.262 against 0.303 undefended, then 0.321 against 0.313 once
# the replay's BatchNorm changed its rounding (2026-12-06); outside FLARE, on NIH images 0 and 100 with
# attack seeds 0-3, it lowered one restart's SSIM in 7 of 8 runs (0.286 against 0.357 on average).
ATTACK = {
    "clients": [HIGH_RISK_SITE], "max_seconds": 600.0, "max_iterations": 1500, "restarts": 3, "seed": 0, "end_run_wait_s": 600.0,
    "prior": "flat",
}


def _set_result_filter_args(job: Path, **args) -> None:
    """Override arguments of every result filter, e.g. fix the seed (the shipped jobs leave it None:
    fresh noise each round)."""
    config_path = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(config_path.read_text())
    for chain in config["task_result_filters"]:
        for result_filter in chain["filters"]:
            result_filter.setdefault("args", {}).update(args)
    config_path.write_text(json.dumps(config, indent=4))


def _high_risk_record(job_name: str, root, nih_cxr_path, **filter_args) -> dict:
    spec = DataSpec(source=str(nih_cxr_path), max_train_images=40)
    job = prepare_job(job_name, root / job_name / "job", num_rounds=1, data_spec=spec, component_args={"gia_widget": ATTACK})
    _set_result_filter_args(job, seed=0, **filter_args)
    run = run_simulator(job, root / job_name / "ws", timeout_s=900)
    assert run.returncode == 0, run.log_tail
    lines = (run.server_run_dir / "gia" / METRICS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines if json.loads(line)["client"] == HIGH_RISK_SITE]
    assert len(records) == 1 and records[0]["gia/status"] == "ok", records
    return records[0]


@pytest.fixture(scope="module")
def undefended(tmp_path_factory, nih_cxr_path) -> dict:
    return _high_risk_record("fedavg_cxr_audit", tmp_path_factory.mktemp("defense_jobs"), nih_cxr_path)


@pytest.mark.slow
@pytest.mark.parametrize("job_name", DEFENSE_JOBS)
def test_defense_job_lowers_the_widgets_ssim_on_the_high_risk_site(job_name, undefended, tmp_path, nih_cxr_path):
    defended = _high_risk_record(job_name, tmp_path, nih_cxr_path)
    print(f"{job_name}: SSIM {defended['gia/ssim']:.3f} vs {undefended['gia/ssim']:.3f}, PSNR {defended['gia/psnr']:.2f} vs {undefended['gia/psnr']:.2f}")
    assert defended["gia/ssim"] < undefended["gia/ssim"]


@pytest.mark.slow
def test_calibrated_job_sends_the_high_risk_update_and_lowers_the_widgets_ssim(undefended, tmp_path, nih_cxr_path):
    """The self-audited shadow defense finds a strength that meets its target (the update is not
    blocked) and the server's attack recovers less. The audits get a fixed budget (deterministic) and,
    as in the benchmark, only the high-risk site is audited: auditing all sites took 7 minutes."""
    audit = {"max_seconds": None, "max_iterations": 300, "restarts": 1, "max_images": 1, "ladder_factor": 4.0}
    defended = _high_risk_record("fedavg_cxr_calibrated", tmp_path, nih_cxr_path, **audit)
    print(f"fedavg_cxr_calibrated: SSIM {defended['gia/ssim']:.3f} vs {undefended['gia/ssim']:.3f}")
    assert defended["gia/ssim"] < undefended["gia/ssim"]
