"""Update-matching objectives keep float32 precision on updates of millions of parameters."""

from __future__ import annotations

import pytest
import torch

from nvflare_gia.attack import OBJECTIVES, FlatLayout

# Tensor sizes like MONAI ResNet-18's largest convolutions (layer4: 512x512x3x3 = 2,359,296), with
# per-tensor scales spread like a real update's, so that a sequential float32 sum loses digits.
_SIZES = (2_359_296, 2_359_296, 1_179_648, 3_000_000, 512, 64)
_SCALES = (1e-3, 3e-4, 2e-3, 5e-4, 1e-1, 1.0)


def _update(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([scale * torch.randn(size, generator=generator) for size, scale in zip(_SIZES, _SCALES)])


def _float64_reference(name: str, simulated: torch.Tensor, observed: torch.Tensor) -> float:
    s, o = simulated.double(), observed.double()
    if name == "l2":
        return float((s - o).pow(2).sum() / o.pow(2).sum())
    if name == "cosine":
        return float(1 - (s * o).sum() / (s.pow(2).sum() * o.pow(2).sum()).sqrt())
    per = [1 - (a * b).sum() / (a.pow(2).sum() * b.pow(2).sum()).sqrt() for a, b in zip(s.split(_SIZES), o.split(_SIZES))]
    return float(torch.stack(per).mean())


def test_segment_sums_of_a_ten_million_entry_update_match_float64():
    values = _update(0).pow(2)
    sums = FlatLayout.from_sizes(_SIZES).segment_sum(values)
    reference = torch.stack([chunk.double().sum() for chunk in values.split(_SIZES)])
    torch.testing.assert_close(sums.double(), reference, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_of_a_ten_million_entry_update_match_float64(name):
    observed = _update(0)
    nearby = observed + 1e-2 * _update(1)
    layout = FlatLayout.from_sizes(_SIZES)
    objective = OBJECTIVES[name]
    assert abs(float(objective(observed, observed, layout))) < 1e-6  # an exact match scores 0, never below
    # 1 - cos cancels in float32: what is left is its rounding (6e-8), not the 9e-5 of a sequential sum
    expected = _float64_reference(name, nearby, observed)
    assert float(objective(nearby, observed, layout)) == pytest.approx(expected, rel=1e-4, abs=2e-7)
