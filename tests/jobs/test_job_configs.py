"""Every job folder in jobs/ builds with FLARE's own component builder, so a typo fails here."""

from __future__ import annotations

import json

import pytest
from nvflare.fuel.utils.component_builder import ComponentBuilder

from nvflare_gia.data import DataSpec
from nvflare_gia.flare.jobs import JOBS_DIR

JOB_FOLDERS = sorted(p for p in JOBS_DIR.iterdir() if (p / "meta.json").is_file())
SECTIONS = ("components", "workflows", "executors", "task_data_filters", "task_result_filters")


class _Builder(ComponentBuilder):
    def get_module_scanner(self):
        return None


def _component_configs(config: dict):
    for section in SECTIONS:
        for entry in config.get(section, []):
            if "executor" in entry:
                yield section, entry["executor"]
            elif "filters" in entry:
                yield from ((section, f) for f in entry["filters"])
            else:
                yield section, entry


def test_jobs_folder_is_not_empty():
    assert {p.name for p in JOB_FOLDERS} >= {"fedavg_cxr"}


@pytest.mark.parametrize("job", JOB_FOLDERS, ids=lambda p: p.name)
def test_job_meta_deploys_one_app_to_all_sites(job):
    meta = json.loads((job / "meta.json").read_text())
    assert meta["name"] == job.name
    assert meta["deploy_map"] == {"app": ["@ALL"]}
    assert not (job / "app" / "custom").exists(), "job folders ship no custom code"


@pytest.mark.parametrize("job", JOB_FOLDERS, ids=lambda p: p.name)
def test_job_components_build_with_flare_component_builder(job):
    builder = _Builder()
    for config_file in sorted((job / "app" / "config").glob("config_fed_*.json")):
        config = json.loads(config_file.read_text())
        assert config["format_version"] == 2
        for section, component in _component_configs(config):
            built = builder.build_component(component)
            assert built is not None, f"{config_file.name}:{section}: {component['path']}"


@pytest.mark.parametrize("job", JOB_FOLDERS, ids=lambda p: p.name)
def test_job_data_spec_is_valid(job):
    spec = DataSpec.from_json(str(job / "app" / "config" / "gia_data.json"))
    assert len(spec.sites()) == len(spec.site_names)


@pytest.mark.parametrize("job", JOB_FOLDERS, ids=lambda p: p.name)
def test_client_self_audits_use_the_prior_of_the_jobs_attack_widget(job):
    """A gate or calibration that audited with a weaker prior than the server's widget would pass
    updates the widget then reports as leaking: every audit filter names the widget's prior."""
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    widget_priors = [c["args"].get("prior", "flat") for _, c in _component_configs(server) if c["path"].endswith("GradientInversionWidget")]
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    audit_filters = [c for _, c in _component_configs(client) if c["path"].endswith(("LeakageGateFilter", "CalibratedDefenseFilter"))]
    for audit_filter in audit_filters:
        assert widget_priors and audit_filter.get("args", {}).get("prior", "flat") in widget_priors, audit_filter["path"]
