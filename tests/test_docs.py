"""The deployment guide's worked example is the real difference between the job folders."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "deployment.md"


def _diff(before: str, after: str) -> str:
    a = (REPO / before).read_text().splitlines(keepends=True)
    b = (REPO / after).read_text().splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=before, tofile=after))


@pytest.mark.parametrize(
    "before, after",
    [
        ("jobs/fedavg_cxr/app/config/config_fed_server.json", "jobs/fedavg_cxr_audit/app/config/config_fed_server.json"),
        ("jobs/fedavg_cxr_audit/app/config/config_fed_client.json", "jobs/fedavg_cxr_shadow/app/config/config_fed_client.json"),
    ],
)
def test_guide_diff_matches_the_job_folders(before, after):
    blocks = re.findall(r"```diff\n(.*?)```", GUIDE.read_text(), flags=re.S)
    expected = _diff(before, after)
    assert expected, "the two job folders do not differ"
    assert expected in blocks, f"docs/deployment.md lacks the current diff of {before} -> {after}"


def test_readme_links_the_deployment_guide():
    assert "docs/deployment.md" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("block", ["setup", "test"])
def test_ci_runs_the_readmes_commands_verbatim(block):
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- ci:{block} -->\n```bash\n(.*?)\n```", readme, flags=re.S)
    assert match, f"README.md lacks the ci:{block} block"
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert match.group(1) in ci_lines, f".ci/run does not run the README's {block} command {match.group(1)!r}"
