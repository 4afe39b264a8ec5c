"""``bench defenses --grid``: a defense's strengths replaced from the command line."""

from __future__ import annotations

import json

import pytest

from nvflare_gia.bench.defense_bench import parse_grid, run_defense_benchmark
from nvflare_gia.cli import main
from nvflare_gia.errors import ConfigError


def test_parse_grid_reads_one_parameter_per_defense_weakest_first():
    grid = parse_grid(["shadow:budget=0.1,0.25,1", "gaussian:perturb_bn_stats=true,false", "latent:split_layer=features.7"])
    assert grid == {
        "shadow": [{"budget": 0.1}, {"budget": 0.25}, {"budget": 1}],
        "gaussian": [{"perturb_bn_stats": True}, {"perturb_bn_stats": False}],
        "latent": [{"split_layer": "features.7"}],
    }


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["shadow"], r"must look like DEFENSE:PARAM=V1,V2"),
        (["shadow:budget"], r"must look like DEFENSE:PARAM=V1,V2"),
        (["shadow:=0.1"], r"must look like DEFENSE:PARAM=V1,V2"),
        (["shadwo:budget=0.1"], r"must be one of \['calibrated_gaussian', .*'shadow'\], got 'shadwo'"),
        (["none:x=1"], r"must be one of .*got 'none'"),
        (["shadow:budget=0.1", "shadow:mask_fraction=0.5"], r"defense 'shadow' is given twice"),
        (["shadow:budget=0.1,,0.2"], r"has an empty value"),
    ],
)
def test_parse_grid_rejects_bad_entries(entries, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(entries)


def test_bad_grid_parameters_fail_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match=r"budget"):
        run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), grid={"shadow": [{"budget": 0.1}, {"budget": -1.0}]})
    with pytest.raises(ConfigError, match=r"grid names defenses \['shadow'\] that are not benchmarked; they must be among \['gaussian'\]"):
        run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), defenses=["gaussian"], grid={"shadow": [{"budget": 0.1}]})
    assert not (tmp_path / "x.json").exists()


def test_cli_grid_replaces_the_defense_strengths_in_a_real_run(tmp_path, write_small_npz):
    path = tmp_path / "grid.json"
    argv = ["bench", "defenses", "--quick", "--data", str(write_small_npz(tmp_path, image_size=16)), "--json", str(path),
            "--rounds", "1", "--attack-seconds", "1", "--grid", "gaussian:sigma0=0.03,3.0"]
    assert main(argv) == 0
    runs = json.loads(path.read_text())["runs"]
    assert [(run["defense"], run["params"]) for run in runs] == [("none", {}), ("gaussian", {"sigma0": 0.03}), ("gaussian", {"sigma0": 3.0})]


def test_cli_reports_a_bad_grid_without_a_traceback(tmp_path, caplog):
    with caplog.at_level("ERROR"):
        code = main(["bench", "defenses", "--quick", "--json", str(tmp_path / "x.json"), "--grid", "shadow:budget=-1"])
    assert code == 2 and "budget" in caplog.text
