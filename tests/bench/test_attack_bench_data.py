"""``bench attack`` on data too small for its plan: refused before any attack runs."""

from __future__ import annotations

import numpy as np
import pytest

from nvflare_gia.bench import attack_bench
from nvflare_gia.errors import DataError


def test_attack_benchmark_refuses_too_few_images_before_attacking(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "two.npz"
    np.savez(data, **{
        f"{split}_{kind}": value
        for split in ("train", "val", "test")
        for kind, value in (("images", rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)), ("labels", np.array([0, 1])))
    })
    attacked = []
    monkeypatch.setattr(attack_bench, "_one_run", lambda *args, **kwargs: attacked.append(args) or pytest.fail("attacked"))
    with pytest.raises(DataError, match=r"2 training images, fewer than batch 4"):
        attack_bench.run_attack_benchmark(quick=True, data=str(data), json_path=str(tmp_path / "x.json"), seconds=1.0, device="cpu")
    assert attacked == []
