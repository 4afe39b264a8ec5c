"""Leakage reports: a real simulator run, hand-written widget outputs, and a real small benchmark."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import stat
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nvflare_gia.audit import save_reconstruction
from nvflare_gia.cli import _leakage_table, main
from nvflare_gia.errors import DataError
from nvflare_gia.metrics import compute_ssim
from nvflare_gia.report import find_metrics_file, format_metric, leakage_verdict, write_bench_report, write_run_report

NIH_CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_cxr1000_64.npz"
FAST_WIDGET = {"max_seconds": 3.0, "max_iterations": 30, "restarts": 1}
DATA_URI = re.compile(r'src="data:image/png;base64,([^"]+)"')


# ------------------------------------------------------------------------------------------ helpers
class _Tables(HTMLParser):
    """Every ``<table id=...>``: its header texts and, per row, the row's attributes and its cells
    as ``(data-key, text)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), {"headers": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": attrs, "cells": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [tag, attrs.get("data-key"), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            kind, key, text = self._cell
            (self._table["headers"].append(text) if kind == "th" else self._row["cells"].append((key, text)))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["cells"]:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def _tables(html_text: str) -> dict[str, dict]:
    parser = _Tables()
    parser.feed(html_text)
    return parser.tables


def _md_rows(markdown: str, heading: str) -> list[list[str]]:
    """Body rows of the first table under ``## heading`` in ``summary.md``, split into cells."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[1:]]


def _embedded_pngs(html_text: str) -> list[Image.Image]:
    images = []
    for encoded in DATA_URI.findall(html_text):
        data = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG"
        images.append(Image.open(io.BytesIO(data)))
    return images


def _assert_self_contained(html_text: str) -> None:
    assert not re.search(r"<(link|script)\b", html_text), "report must not load external assets"
    sources = re.findall(r'(?:src|href)="([^"]*)"', html_text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources


def _assert_tables_match_records(html_text: str, markdown: str, records: list[dict]) -> None:
    """The HTML 'all records' table and the summary's equal the widget's JSON lines, cell by cell."""
    table = _tables(html_text)["all-records"]
    assert [(r["attrs"]["data-site"], int(r["attrs"]["data-round"])) for r in table["rows"]] == [
        (r["client"], r["round"]) for r in sorted(records, key=lambda r: (r["client"], r["round"]))
    ]
    by_key = {(r["client"], r["round"]): r for r in records}
    md_rows = _md_rows(markdown, "All records")
    assert len(md_rows) == len(table["rows"])
    for row, md_row in zip(table["rows"], md_rows):
        record = by_key[(row["attrs"]["data-site"], int(row["attrs"]["data-round"]))]
        for (key, text), md_text in zip(row["cells"], md_row):
            if key.startswith("gia/") and key != "gia/status":
                expected = format_metric(key, record.get(key))
            else:
                expected = str(record.get(key, "-"))
            assert text == expected == md_text, (record["client"], record["round"], key, text, md_text, expected)


# ------------------------------------------------------------------------- (a) a real simulator run
@pytest.fixture(scope="module")
def audit_run(tmp_path_factory):
    if not NIH_CXR.is_file():
        pytest.skip(f"real chest X-rays not found at {NIH_CXR}")
    from nvflare_gia.data import DataSpec
    from nvflare_gia.flare.jobs import prepare_job, run_simulator

    root = tmp_path_factory.mktemp("report_audit")
    job = prepare_job(
        "fedavg_cxr_audit", root / "job", num_rounds=2, data_spec=DataSpec(source=str(NIH_CXR)), component_args={"gia_widget": FAST_WIDGET}
    )
    run = run_simulator(job, root / "ws", timeout_s=600)
    assert run.returncode == 0, run.log_tail
    return run


@pytest.mark.slow
def test_run_report_shows_every_attacked_site_and_round_of_a_simulator_run(audit_run, tmp_path):
    records = [json.loads(line) for line in (audit_run.server_run_dir / "gia" / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["client"], r["round"]) for r in records) == [(c, r) for c in ("site-1", "site-2") for r in (0, 1)]
    html_path = write_run_report(audit_run.workspace, tmp_path / "report")  # the workspace: searched below
    html_text = html_path.read_text(encoding="utf-8")
    markdown = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")

    _assert_self_contained(html_text)
    ok = [r for r in records if r["gia/status"] == "ok"]
    pngs = _embedded_pngs(html_text)
    assert len(pngs) == 1 + len(ok)  # leakage per round + one grid per attacked site and round
    for record in ok:
        assert f'id="grid-{record["client"]}-round-{record["round"]}"' in html_text
        assert f"### {record['client']}, round {record['round']}" in markdown
        assert (tmp_path / "report" / f"grid_{record['client']}_round_{record['round']}.png").is_file()
    for record in records:
        if record["gia/status"] != "ok":  # the attack engine's quality is not under test here
            assert record["reason"] in markdown
    _assert_tables_match_records(html_text, markdown, records)
    last = _tables(html_text)["last-round"]["rows"]
    assert [(r["attrs"]["data-site"], r["attrs"]["data-round"]) for r in last] == [("site-1", "1"), ("site-2", "1")]
    for row in last:
        record = next(r for r in records if (r["client"], str(r["round"])) == (row["attrs"]["data-site"], row["attrs"]["data-round"]))
        cells = dict(row["cells"])
        for key in ("gia/ssim", "gia/prior_ssim", "gia/rdlv", "gia/psnr", "gia/mse"):
            assert cells[key] == format_metric(key, record.get(key))
        assert cells["gia_defense"] == "none"  # the audit job has no result filter


# -------------------------------------------------------------- (b) hand-written widget outputs
def _images(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 16, 16)).astype(np.float32)


@pytest.fixture
def handmade_run(tmp_path) -> Path:
    """A server run dir as the widget leaves it, recorded on another machine (the ``files`` paths do
    not exist here), with failures of every kind and a truncated last line."""
    run_dir = tmp_path / "server" / "simulate_job"
    gia = run_dir / "gia"
    truth = _images(0, 3)
    reconstruction = np.stack([_images(1, 1)[0], truth[1] * 0.7 + 0.15, truth[2]])  # pair 0 noise, pair 2 exact
    save_reconstruction(gia / "site-1" / "round_0", reconstruction, np.array([0, 1, 1]), truth, np.array([0, 1, 0]))
    save_reconstruction(gia / "site-1" / "round_1", reconstruction, np.array([0, 1, 1]), truth, np.array([0, 1, 0]))
    (gia / "site-1" / "round_1" / "reconstruction.npz").unlink()  # only grid.png left
    defense = {"name": "gaussian", "params": {"sigma0": 0.1}, "noise_norm": 1.5, "seconds": 0.0213}
    stale = {"npz": "/elsewhere/gia/x/reconstruction.npz", "png": "/elsewhere/gia/x/grid.png"}
    lines = [
        {"client": "site-1", "round": 0, "gia/status": "ok", "gia/ssim": 0.41234, "gia/prior_ssim": 0.2, "gia/rdlv": 1.0617,
         "gia/psnr": 14.256, "gia/mse": 0.0375, "gia/iip": 1.0, "gia/label_accuracy": 0.6667, "gia/update_residual": 0.25,
         "gia/matching_loss": 0.0213, "gia/truth_matching_loss": 5.4e-06, "gia/seconds": 4.2, "num_images": 3, "batch_size": 3,
         "gia_defense": defense, "files": stale},
        {"client": "site-2", "round": 0, "gia/status": "failed", "reason": "RuntimeError('boom <x>')"},
        {"client": "site-1", "round": 1, "gia/status": "ok", "gia/ssim": 0.1, "gia/prior_ssim": 0.2, "gia/rdlv": -0.5,
         "gia/psnr": 9.0, "gia/mse": 0.12, "gia/seconds": 3.9, "num_images": 3, "batch_size": 3,
         "gia_defense": {**defense, "noise_norm": 2.5, "seconds": 0.0187}, "files": stale},
        {"client": "site-2", "round": 1, "gia/status": "not_finished", "reason": "still pending after end_run_wait_s=60.0"},
        {"client": "site-3", "round": -1, "gia/status": "skipped", "reason": "no update received from this client"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"client": "site-2", "round": 2, "gia/sta'
    (gia / "metrics.jsonl").write_text(text)
    return run_dir


def test_run_report_skips_a_truncated_last_line_and_lists_every_failure(handmade_run):
    html_path = write_run_report(handmade_run)
    assert html_path == handmade_run / "gia_report" / "report.html"
    html_text = html_path.read_text(encoding="utf-8")
    markdown = html_path.with_name("summary.md").read_text(encoding="utf-8")
    _assert_self_contained(html_text)
    tables = _tables(html_text)
    assert ("site-2", "2") not in {(r["attrs"]["data-site"], r["attrs"]["data-round"]) for r in tables["all-records"]["rows"]}
    records = [json.loads(line) for line in (handmade_run / "gia" / "metrics.jsonl").read_text().splitlines()[:-1]]
    _assert_tables_match_records(html_text, markdown, records)
    problems = {(r["attrs"]["data-site"], r["attrs"]["data-round"]): [t for _, t in r["cells"]] for r in tables["problems"]["rows"]}
    assert problems == {
        ("site-2", "0"): ["site-2", "0", "failed", "RuntimeError('boom <x>')"],
        ("site-2", "1"): ["site-2", "1", "not_finished", "still pending after end_run_wait_s=60.0"],
        ("site-3", "-1"): ["site-3", "-1", "skipped", "no update received from this client"],
    }
    assert html.escape("RuntimeError('boom <x>')") in html_text and "<x>" not in html_text
    last = {r["attrs"]["data-site"]: dict(r["cells"]) for r in tables["last-round"]["rows"]}
    assert last["site-1"]["worst_rdlv"] == f"{format_metric('rdlv', 1.0617)} (0)"  # round 0 leaked; round 1 did not
    verdicts = {site: cells["verdict"] for site, cells in last.items()}
    assert verdicts["site-1"] == "no more than the prior (RDLV <= 0)"  # round 1 is the last
    assert verdicts["site-2"] == "attack not finished: still pending after end_run_wait_s=60.0"
    assert verdicts["site-3"] == "not attacked (skipped): no update received from this client"
    first = next(r for r in tables["all-records"]["rows"] if r["attrs"]["data-round"] == "0" and r["attrs"]["data-site"] == "site-1")
    assert first["attrs"]["data-verdict"] == "leaks"
    assert dict(first["cells"])["gia/truth_matching_loss"] == "5.4e-06" and dict(first["cells"])["gia/matching_loss"] == "0.0213"


_SCORED = {"client": "site-1", "round": 0, "gia/status": "ok", "gia/ssim": 0.3, "gia/prior_ssim": 0.3}


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"gia/rdlv": 0.4, "gia/matching_loss": 0.02, "gia/truth_matching_loss": 5e-6}, "leaks"),
        # the attack stopped far short of the fit the truth gives: RDLV <= 0 says nothing about privacy
        ({"gia/rdlv": -0.2, "gia/matching_loss": 0.038, "gia/truth_matching_loss": 5.5e-6}, "lower_bound"),
        ({"gia/rdlv": -0.5, "gia/matching_loss": 53.0, "gia/truth_matching_loss": 2.5e-4}, "lower_bound"),
        # a defended update: the truth fits it no better than the reconstruction does
        ({"gia/rdlv": -0.2, "gia/matching_loss": 0.5, "gia/truth_matching_loss": 0.9}, "prior"),
        ({"gia/rdlv": -0.2, "gia/matching_loss": 0.5, "gia/truth_matching_loss": 0.26}, "prior"),
        ({"gia/rdlv": -0.2, "gia/matching_loss": 0.5}, "prior"),  # no truth loss recorded (older runs)
        ({"gia/rdlv": None, "gia/matching_loss": 0.5}, "no_result"),  # audit mode off: nothing to compare with
    ],
)
def test_verdict_calls_rdlv_at_most_zero_a_lower_bound_when_the_truth_fits_the_update_better(fields, kind):
    record = {**_SCORED, **fields}
    got_kind, text = leakage_verdict(record)
    assert got_kind == kind
    if kind == "lower_bound":
        assert format_metric("matching_loss", fields["gia/truth_matching_loss"]) in text
    table = _leakage_table([record])
    assert ("no more than the prior (RDLV <= 0)" in table) == (kind == "prior")
    assert ("lower bound" in table) == (kind == "lower_bound")
    assert ("no ground truth" in table) == (kind == "no_result")


def test_demo_table_shows_each_sites_last_round_and_its_worst_rdlv():
    records = [
        {**_SCORED, "round": 0, "gia/rdlv": 0.035},
        {**_SCORED, "round": 1, "gia/rdlv": -0.078, "gia/matching_loss": 0.029, "gia/truth_matching_loss": 5.5e-6},
        {**_SCORED, "client": "site-2", "round": 1, "gia/rdlv": -0.126},
        {"client": "site-3", "round": -1, "gia/status": "skipped", "reason": "no update received from this client"},
    ]
    rows = {line.split()[0]: line for line in _leakage_table(records).splitlines()[1:]}
    assert rows["site-1"].split()[1] == "1" and "-0.078" in rows["site-1"] and "+0.035 (0)" in rows["site-1"]
    assert "lower bound" in rows["site-1"]  # the verdict reads the last round
    assert "-0.126 (1)" in rows["site-2"] and "no more than the prior" in rows["site-2"]
    assert "not attacked (skipped): no update received from this client" in rows["site-3"]


def test_run_report_shows_the_defense_and_its_cost_per_site(handmade_run, tmp_path):
    html_text = write_run_report(handmade_run, tmp_path / "out").read_text(encoding="utf-8")
    rows = {r["cells"][0][1]: [t for _, t in r["cells"]] for r in _tables(html_text)["defenses"]["rows"]}
    assert rows["site-1"] == ["site-1", 'gaussian {"sigma0": 0.1}', "0, 1", format_metric("seconds", 0.02),
                              format_metric("seconds", 0.0213), format_metric("noise_norm", 2.0)]
    assert rows["site-2"][1].startswith("unknown") and rows["site-3"][1].startswith("unknown")


def test_run_report_marks_the_best_and_worst_pair_and_falls_back_to_grid_png(handmade_run, tmp_path):
    out = tmp_path / "out"
    html_text = write_run_report(handmade_run, out).read_text(encoding="utf-8")
    with np.load(handmade_run / "gia" / "site-1" / "round_0" / "reconstruction.npz") as saved:
        scores = compute_ssim(saved["reconstruction"], saved["truth"])
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    assert (best, worst) == (2, 0)
    assert f"best pair #{best} (SSIM {scores[best]:.3f}, green), worst pair #{worst} (SSIM {scores[worst]:.3f}, red)" in html_text
    grid_png = (handmade_run / "gia" / "site-1" / "round_1" / "grid.png").read_bytes()
    assert base64.b64encode(grid_png).decode("ascii") in html_text
    assert (out / "grid_site-1_round_1.png").read_bytes() == grid_png
    assert len(_embedded_pngs(html_text)) == 3  # leakage per round, one drawn grid, one copied grid.png
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


@pytest.mark.parametrize("layout", ["gia_folder", "workspace", "downloaded_job"])
def test_run_report_finds_the_metrics_below_any_run_dir_layout(handmade_run, tmp_path, layout):
    if layout == "gia_folder":
        run_dir = handmade_run / "gia"
    elif layout == "workspace":
        run_dir = tmp_path  # <ws>/server/simulate_job/gia
    else:  # nvflare job download <ID> -o downloads -> downloads/<ID>/workspace
        run_dir = tmp_path / "downloads"
        shutil.copytree(handmade_run, run_dir / "1234-abcd" / "workspace")
    assert find_metrics_file(run_dir).parent.name == "gia"
    html_text = write_run_report(run_dir, tmp_path / "out").read_text(encoding="utf-8")
    assert 'id="grid-site-1-round-0"' in html_text


def test_run_report_names_run_dir_when_no_metrics_are_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape(repr(str(tmp_path / "empty")))):
        write_run_report(tmp_path / "empty")
    for name in ("a", "b"):
        (tmp_path / "two" / name / "gia").mkdir(parents=True)
        (tmp_path / "two" / name / "gia" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="holds 2 runs"):
        find_metrics_file(tmp_path / "two")


def test_report_command_writes_the_report_or_fails_naming_run_dir(handmade_run, tmp_path, caplog, capsys):
    assert main(["report", str(handmade_run), "--out", str(tmp_path / "cli")]) == 0
    assert f"report: {tmp_path / 'cli' / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "cli" / "summary.md").is_file() and (tmp_path / "cli" / "leakage_per_round.png").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in caplog.text
    assert main(["report"]) == 2


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), True, "0.5"])
def test_format_metric_prints_a_dash_for_missing_values(value):
    assert format_metric("gia/ssim", value) == "-"


# ------------------------------------------------------------------- (c) a real small benchmark
@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, write_small_npz) -> Path:
    """A real ``bench defenses`` run, kept cheap: one round, 2 s attacks, one defense, and a small
    cut of the synthetic images so the reference classifier trains fast."""
    from nvflare_gia.bench.defense_bench import run_defense_benchmark

    root = tmp_path_factory.mktemp("bench")
    path = root / "defenses.json"
    run_defense_benchmark(quick=True, data=str(write_small_npz(root)), json_path=str(path), rounds=1, attack_seconds=2, defenses=["gaussian"])
    return path


def test_bench_report_plots_privacy_utility_of_a_real_benchmark(bench_json, tmp_path):
    content = json.loads(bench_json.read_text())
    html_path = write_bench_report(bench_json, tmp_path / "out")
    html_text = html_path.read_text(encoding="utf-8")
    _assert_self_contained(html_text)
    assert len(_embedded_pngs(html_text)) == 1 and (tmp_path / "out" / "privacy_utility.png").is_file()
    rows = _tables(html_text)["runs"]["rows"]
    md_rows = _md_rows((tmp_path / "out" / "summary.md").read_text(encoding="utf-8"), "Runs")
    assert len(rows) == len(md_rows) == len(content["runs"]) == 3
    for row, md_row, run in zip(rows, md_rows, content["runs"]):
        cells = dict(row["cells"])
        assert cells["defense"] == run["defense"]
        for key in ("accuracy", "f1", "ssim", "rdlv", "psnr", "mse", "attacker_accuracy", "prior_attacker_accuracy", "filter_seconds"):
            assert cells[key] == format_metric(key, run[key]), key
        assert run["prior_attacker_accuracy"] in (0.0, 1.0)  # one attacked image, one flat prior
        assert [t for _, t in row["cells"]] == md_row
        pick = content["equal_utility"].get(run["defense"])
        expected = "baseline" if run["defense"] == "none" else ("yes" if pick and pick["params"] == run["params"] else "")
        assert cells["equal_utility"] == expected


def test_bench_report_draws_overhead_bars_when_the_json_has_them(bench_json, tmp_path):
    content = json.loads(bench_json.read_text())
    content["overhead"] = [  # rows as run_overhead_benchmark writes them
        {"filter": "gaussian", "parameters": 1_000_000, "seconds": 0.004, "numpy_add_seconds": 0.001, "ratio": 4.0},
        {"filter": "shadow", "model": "small_cnn", "parameters": 60_000, "seconds": 0.3, "numpy_add_seconds": None,
         "local_epoch_seconds": 0.05, "ratio": 6.0},
    ]
    path = tmp_path / "both.json"
    path.write_text(json.dumps(content))
    html_text = write_bench_report(path).read_text(encoding="utf-8")
    assert len(_embedded_pngs(html_text)) == 2
    assert (tmp_path / "both_report" / "overhead.png").is_file()
    rows = [dict(r["cells"]) for r in _tables(html_text)["overhead"]["rows"]]
    assert [(r["filter"], r["seconds"], r["numpy_add_seconds"], r["local_epoch_seconds"]) for r in rows] == [
        ("gaussian", format_metric("seconds", 0.004), format_metric("numpy_add_seconds", 0.001), "-"),
        ("shadow", format_metric("seconds", 0.3), "-", format_metric("local_epoch_seconds", 0.05)),
    ]


def test_bench_report_lists_every_problem_of_a_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"runs": [{"defense": "none"}, {"defense": "gaussian", "params": {}, "accuracy": 0.5}]}))
    with pytest.raises(DataError, match=r"runs\[0\] lacks \['params', 'accuracy', 'ssim'\]; runs\[1\] lacks \['ssim'\]"):
        write_bench_report(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="must hold a 'runs' list"):
        write_bench_report(path)


def test_report_module_does_not_import_nvflare(handmade_run, tmp_path):
    code = (
        "import sys\n"
        "from nvflare_gia.report import write_run_report\n"
        f"write_run_report({str(handmade_run)!r}, {str(tmp_path / 'out')!r})\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'nvflare' or m.startswith('nvflare.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"report imports nvflare modules: {result.stdout.strip()}"


@pytest.mark.parametrize("learned", [True, False])
def test_bench_report_warns_when_the_undefended_model_did_not_learn(bench_json, tmp_path, learned):
    content = json.loads(bench_json.read_text())
    content["protocol"].update(model_learned=learned, majority_accuracy=0.5)
    path = tmp_path / "learned.json"
    path.write_text(json.dumps(content))
    html_text = write_bench_report(path, tmp_path / "out").read_text(encoding="utf-8")
    assert ("did not clearly beat always predicting the majority class" in html_text) is (not learned)


def _bench_report_rows(content: dict, tmp_path: Path) -> tuple[str, list[dict]]:
    """Write ``content`` as a bench JSON, report it into ``tmp_path/out``; return the HTML and the runs table's rows."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(content))
    html_text = write_bench_report(path, tmp_path / "out").read_text(encoding="utf-8")
    return html_text, [dict(r["cells"]) for r in _tables(html_text)["runs"]["rows"]]


def test_bench_report_gives_the_standard_error_of_runs_over_several_seeds(bench_json, tmp_path):
    content = json.loads(bench_json.read_text())
    run = content["runs"][1]
    run["stderr"] = {"accuracy": 0.0123, "ssim": 0.0456, "rdlv": None}
    html_text, rows = _bench_report_rows(content, tmp_path)
    assert rows[1]["accuracy"] == f"{format_metric('accuracy', run['accuracy'])} ± {format_metric('accuracy', 0.0123)}"
    assert rows[1]["ssim"] == f"{format_metric('ssim', run['ssim'])} ± {format_metric('ssim', 0.0456)}"
    assert rows[1]["rdlv"] == format_metric("rdlv", run["rdlv"])  # no standard error: the mean alone
    assert rows[0]["ssim"] == format_metric("ssim", content["runs"][0]["ssim"])  # a run without stderr
    assert "standard error over the seeds" in html_text


def test_bench_report_gives_the_paired_differences_and_balanced_attacker_accuracy(bench_json, tmp_path):
    content = json.loads(bench_json.read_text())
    html_text = write_bench_report(bench_json, tmp_path / "single").read_text(encoding="utf-8")
    assert "vs_none_accuracy" not in html_text and "balanced_attacker_accuracy" not in html_text  # one seed: no such columns
    content["runs"][1]["balanced_attacker_accuracy"] = 0.5
    content["runs"][1]["vs_none"] = {
        "accuracy": {"mean": -0.0123, "stderr": 0.004, "n": 4},
        "ssim": {"mean": 0.05, "stderr": None, "n": 1},
        "attacker_accuracy": {"mean": None, "stderr": None, "n": 0},
    }
    html_text, rows = _bench_report_rows(content, tmp_path)
    assert rows[1]["vs_none_accuracy"] == f"{format_metric('accuracy', -0.0123)} ± {format_metric('accuracy', 0.004)} (n=4)"
    assert rows[1]["vs_none_ssim"] == f"+{format_metric('ssim', 0.05)} (n=1)"
    assert rows[1]["vs_none_attacker_accuracy"] == "-" and rows[0]["vs_none_accuracy"] == "-"
    assert rows[1]["balanced_attacker_accuracy"] == "0.500" and rows[0]["balanced_attacker_accuracy"] == "-"
    assert "Balanced attacker accuracy averages" in html_text
    md_rows = _md_rows((tmp_path / "out" / "summary.md").read_text(encoding="utf-8"), "Runs")
    assert f"{format_metric('accuracy', -0.0123)} ± {format_metric('accuracy', 0.004)} (n=4)" in md_rows[1]
