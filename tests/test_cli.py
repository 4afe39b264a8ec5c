"""The ``nvflare-gia`` command rejects a bad number before any work, naming the argument and what it allows."""

from __future__ import annotations

import pytest

from nvflare_gia.cli import main


@pytest.mark.parametrize(
    ("argv", "arg", "allowed"),
    [
        (["demo", "--rounds", "0"], "--rounds", "integer >= 1"),
        (["demo", "--attack-seconds", "0"], "--attack-seconds", "seconds > 0"),
        (["demo", "--attack-seconds", "nan"], "--attack-seconds", "seconds > 0"),
        (["simulate", "fedavg_cxr", "--rounds", "-1"], "--rounds", "integer >= 1"),
        (["bench", "attack", "--json", "x.json", "--seconds", "-5"], "--seconds", "seconds > 0"),
        (["bench", "attack", "--json", "x.json", "--threads", "0"], "--threads", "integer >= 1"),
        (["bench", "attack", "--json", "x.json", "--parallel-restarts", "0"], "--parallel-restarts", "integer >= 1"),
        (["bench", "defenses", "--json", "x.json", "--rounds", "0"], "--rounds", "integer >= 1"),
        (["bench", "defenses", "--json", "x.json", "--attack-seconds", "0"], "--attack-seconds", "seconds > 0"),
        (["bench", "overhead", "--json", "x.json", "--repeats", "0"], "--repeats", "integer >= 1"),
    ],
)
def test_cli_rejects_a_bad_number_naming_the_argument(argv, arg, allowed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {arg}: must be" in error and allowed in error and repr(argv[-1]) in error
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "gia_runs").exists()


def test_simulate_names_the_known_jobs_for_an_unknown_job_without_a_traceback(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("ERROR"):
        code = main(["simulate", "fedavg_cxr_typo", "--workspace", str(tmp_path / "ws")])
    assert code == 2
    assert "job must be a job folder or one of" in caplog.text and "'fedavg_cxr'" in caplog.text and "fedavg_cxr_typo" in caplog.text
