"""Tests for nvflare_gia.metrics.leakage: RDLV, IIP, label/classifier accuracy and the report."""

from __future__ import annotations

import ast
import doctest
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.metrics import (
    LeakageReport,
    compute_classifier_accuracy,
    compute_iip,
    compute_label_accuracy,
    compute_label_count_accuracy,
    compute_rdlv,
    evaluate_leakage,
    residual_only_report,
)
from nvflare_gia.metrics import leakage as leakage_module

ALL_KEYS = {
    "gia/ssim",
    "gia/psnr",
    "gia/mse",
    "gia/rdlv",
    "gia/prior_ssim",
    "gia/iip",
    "gia/label_count_accuracy",
    "gia/label_accuracy",
    "gia/attacker_accuracy",
    "gia/update_residual",
    "gia/bn_residual",
    "gia/num_images",
    "gia/prior_attacker_accuracy",
}


def _noisy(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + sigma * rng.standard_normal(images.shape), 0.0, 1.0)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(b, a, data_range=1.0)


def _mean_intensity_classifier(side: int) -> torch.nn.Sequential:
    """Fixed linear classifier: class 1 iff the mean intensity exceeds 0.5 (logit1 - logit0 = 2 mean - 1)."""
    linear = torch.nn.Linear(side * side, 2)
    with torch.no_grad():
        linear.weight[0].fill_(0.0)
        linear.weight[1].fill_(2.0 / (side * side))
        linear.bias.copy_(torch.tensor([0.0, -1.0]))
    return torch.nn.Sequential(torch.nn.Flatten(), linear)


# --- RDLV -------------------------------------------------------------------------------------


def test_rdlv_matches_hand_computation():
    assert compute_rdlv(0.6, 0.2) == pytest.approx(2.0)
    assert compute_rdlv(0.1, 0.2) == pytest.approx(-0.5)
    assert compute_rdlv(0.3, 0.3) == 0.0


@pytest.mark.parametrize(("rec", "prior"), [(0.5, 0.0), (0.5, -0.2), (1.5, 0.2), (float("nan"), 0.2)])
def test_rdlv_rejects_undefined_inputs(rec, prior):
    with pytest.raises(DataError, match="compute_rdlv"):
        compute_rdlv(rec, prior)


def test_truth_against_itself_gives_positive_rdlv_from_flat_gray_prior(cxr):
    truth = cxr[:4]
    report = evaluate_leakage(truth, truth)
    prior_ssim = np.mean([_ssim(np.full((64, 64), 0.5), t) for t in truth])
    assert report.ssim == pytest.approx(1.0) and report.mse == 0.0 and report.psnr == 100.0
    assert report.prior_ssim == pytest.approx(prior_ssim, rel=1e-12)
    assert report.rdlv == pytest.approx((1.0 - prior_ssim) / prior_ssim, rel=1e-12)
    assert report.rdlv > 0


def test_prior_against_itself_gives_zero_rdlv(cxr):
    truth = cxr[:4]
    prior = cxr[20:21]  # one image, shape (1, H, W), broadcast to every true image
    report = evaluate_leakage(np.repeat(prior, 4, axis=0), truth, prior=prior)
    assert report.rdlv == pytest.approx(0.0, abs=1e-12)
    assert report.prior_ssim == pytest.approx(np.mean([_ssim(prior[0], t) for t in truth]), rel=1e-12)


def test_rdlv_uses_batch_means_not_per_image_ratios(cxr, rng):
    truth = cxr[:4]
    rec = _noisy(truth, 0.15, rng)
    prior = np.full((64, 64), 0.9)  # a bright prior: SSIM near 0 on dark images, so per-image ratios differ a lot
    rec_ssim = np.array([_ssim(r, t) for r, t in zip(rec, truth)])
    prior_ssim = np.array([_ssim(prior, t) for t in truth])
    expected = (rec_ssim.mean() - prior_ssim.mean()) / prior_ssim.mean()
    report = evaluate_leakage(rec, truth, prior=prior)
    assert report.rdlv == pytest.approx(expected, rel=1e-10)
    assert abs(expected - np.mean((rec_ssim - prior_ssim) / prior_ssim)) > 0.01 * abs(expected)


def test_prior_stack_with_one_image_per_truth_is_used_pairwise(cxr):
    truth, priors = cxr[:3], cxr[30:33]
    report = evaluate_leakage(truth[[2, 0, 1]], truth, prior=priors[:, None])
    assert report.prior_ssim == pytest.approx(np.mean([_ssim(p, t) for p, t in zip(priors, truth)]), rel=1e-12)


def test_prior_of_wrong_shape_raises_data_error(rng):
    truth = rng.random((3, 8, 8))
    with pytest.raises(DataError, match=r"prior must be one image.*got shape \(2, 8, 8\)"):
        evaluate_leakage(truth, truth, prior=rng.random((2, 8, 8)))


# --- IIP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["mse", "ssim"])
def test_iip_is_one_for_exact_copies(metric, cxr):
    indices = np.array([7, 3, 12, 0])
    assert compute_iip(cxr[indices], indices, cxr, metric=metric) == 1.0


def test_iip_is_zero_when_copies_are_attributed_to_the_wrong_images(cxr):
    indices = np.array([7, 3, 12, 0])
    assert compute_iip(cxr[indices], np.roll(indices, 1), cxr) == 0.0


def test_iip_drops_for_noise_reconstructions(cxr, rng):
    indices = rng.permutation(len(cxr))[:8]
    noise = rng.permutation(rng.random((8, 64, 64)))
    assert compute_iip(noise, indices, cxr) <= 0.25
    assert compute_iip(noise, indices, cxr, metric="ssim") <= 0.25


def test_iip_matches_hand_computed_nearest_neighbours():
    site = np.stack([np.full((4, 4), v) for v in (0.1, 0.5, 0.9)])
    rec = np.stack([np.full((4, 4), v) for v in (0.15, 0.45, 0.6)])
    # Nearest neighbours by MSE: 0.15 -> 0.1, 0.45 -> 0.5, 0.6 -> 0.5 (true image is 0.9).
    assert compute_iip(rec, [0, 1, 2], site) == pytest.approx(2 / 3)


def test_iip_index_errors_raise_data_error(cxr):
    with pytest.raises(DataError, match=r"ground_truth_indices must lie in \[0, 40\), got 40"):
        compute_iip(cxr[:2], [0, 40], cxr)
    with pytest.raises(DataError, match=r"ground_truth_indices must have shape \(2,\)"):
        compute_iip(cxr[:2], [0, 1, 2], cxr)


def test_evaluate_leakage_iip_follows_the_matching(cxr, rng):
    site = cxr[:20]
    batch_indices = np.array([5, 11, 2])
    rec = _noisy(site[batch_indices][[1, 2, 0]], 0.03, rng)  # shuffled reconstructions
    report = evaluate_leakage(rec, site[batch_indices], site_images=site, ground_truth_indices=batch_indices)
    assert report.matching == ((0, 1), (1, 2), (2, 0))
    assert report.iip == 1.0


def test_evaluate_leakage_rejects_indices_that_do_not_point_at_the_truth(cxr):
    site = cxr[:20]
    with pytest.raises(DataError, match=r"site_images\[ground_truth_indices\[0\]\] must equal ground_truth\[0\]"):
        evaluate_leakage(site[[5, 6]], site[[5, 6]], site_images=site, ground_truth_indices=[6, 5])


def test_evaluate_leakage_accepts_a_half_precision_copy_of_the_site_images(cxr):
    site = cxr[:20].astype(np.float32)
    indices = np.array([5, 11])
    for truth in (site[indices].astype(np.float16), torch.from_numpy(site[indices]).bfloat16()):
        report = evaluate_leakage(site[indices], truth, site_images=site, ground_truth_indices=indices)
        assert report.iip == 1.0


# --- labels and classifier --------------------------------------------------------------------


def test_label_accuracy_matches_hand_computation():
    assert compute_label_accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert compute_label_accuracy(torch.tensor([[1], [2]]), np.array([1, 2])) == 1.0


def test_label_accuracy_length_mismatch_raises():
    with pytest.raises(DataError, match=r"same length, got shapes \(3,\) and \(2,\)"):
        compute_label_accuracy([0, 1, 1], [0, 1])


def test_float_labels_raise_type_error():
    with pytest.raises(TypeError, match="integer class indices"):
        compute_label_accuracy(np.array([0.0, 1.0]), [0, 1])


def test_label_count_accuracy_is_order_free():
    assert compute_label_count_accuracy([1, 1, 0, 2], [0, 1, 2, 2]) == 0.75
    assert compute_label_count_accuracy([2, 2, 1, 0], [0, 1, 2, 2]) == 1.0
    assert compute_label_count_accuracy([0, 1], [0, 1, 1, 1]) == 0.5  # missing labels count against it
    assert compute_label_count_accuracy([0, 1, 1, 1], [0, 1]) == 0.5  # and so do extra ones


def test_evaluate_leakage_compares_labels_after_matching(cxr, rng):
    truth, labels = cxr[:4], np.array([0, 1, 1, 0])
    perm = np.array([2, 0, 3, 1])
    rec = _noisy(truth[perm], 0.05, rng)
    assert evaluate_leakage(rec, truth, reconstructed_labels=labels[perm], true_labels=labels).label_accuracy == 1.0
    unpaired = evaluate_leakage(rec, truth, reconstructed_labels=labels, true_labels=labels)
    assert unpaired.label_accuracy == 0.0
    # the same multiset of labels, so the order-free measure still sees every label leak
    assert unpaired.label_count_accuracy == 1.0 and unpaired.to_dict()["gia/label_count_accuracy"] == 1.0
    wrong = evaluate_leakage(rec, truth, reconstructed_labels=[1, 1, 1, 0], true_labels=labels)
    assert wrong.label_count_accuracy == 0.75
    assert "gia/label_count_accuracy" not in evaluate_leakage(rec, truth).to_dict()


def test_classifier_accuracy_with_fixed_linear_classifier():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (0.2, 0.8, 0.7, 0.4)])
    classifier = _mean_intensity_classifier(4)
    assert compute_classifier_accuracy(classifier, images, [0, 1, 1, 0]) == 1.0
    assert compute_classifier_accuracy(classifier, images, [0, 1, 0, 0]) == 0.75


def test_classifier_accuracy_accepts_reversed_and_read_only_arrays():
    images = np.stack([np.full((4, 4), v) for v in (0.2, 0.8, 0.7, 0.4)])
    images.setflags(write=False)
    classifier = _mean_intensity_classifier(4)
    # images[::-1] has a negative stride, which torch.from_numpy rejects
    assert compute_classifier_accuracy(classifier, images[::-1], [0, 1, 1, 0]) == 1.0
    assert compute_classifier_accuracy(classifier, images[::-1, None], [0, 1, 1, 0]) == 1.0


def test_classifier_accuracy_reads_a_single_logit_by_sign():
    single = torch.nn.Linear(16, 1)
    with torch.no_grad():
        single.weight.fill_(1.0 / 16)
        single.bias.fill_(-0.5)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), single)
    images = np.stack([np.full((4, 4), v) for v in (0.2, 0.8, 0.7)])
    assert compute_classifier_accuracy(classifier, images, [0, 1, 0]) == pytest.approx(2 / 3)


class _ModeProbe(torch.nn.Module):
    """Identity that records whether it ran in training mode and with gradients enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return x


def test_classifier_runs_in_eval_mode_without_grad_and_modes_are_restored():
    probe = _ModeProbe()
    classifier = torch.nn.Sequential(probe, _mean_intensity_classifier(4))
    classifier.train()
    classifier[1][0].eval()  # a submodule already in eval mode must stay so
    compute_classifier_accuracy(classifier, np.full((2, 4, 4), 0.9), [1, 1])
    assert probe.seen == [(False, False)]
    assert classifier.training and probe.training and not classifier[1][0].training
    assert all(p.grad is None for p in classifier.parameters())


def test_evaluate_leakage_attacker_accuracy_uses_matched_labels(rng):
    truth = np.stack([np.full((8, 8), v) for v in (0.1, 0.9, 0.8, 0.3)])
    labels = np.array([0, 1, 1, 0])
    rec = truth[[1, 3, 0, 2]] + 0.01 * rng.standard_normal((4, 8, 8))
    report = evaluate_leakage(rec, truth, true_labels=labels, classifier=_mean_intensity_classifier(8))
    assert report.attacker_accuracy == 1.0
    # the flat 0.5 prior is class 0 for this classifier (2 * 0.5 - 1 = 0 is not > 0): right on the two class-0 images
    assert report.prior_attacker_accuracy == 0.5


def test_prior_attacker_accuracy_scores_the_prior_in_place_of_each_matched_reconstruction(rng):
    truth = np.stack([np.full((8, 8), v) for v in (0.1, 0.9, 0.8)])
    labels = np.array([0, 1, 1])
    priors = np.stack([np.full((8, 8), v) for v in (0.7, 0.2, 0.9)])  # classes 1, 0, 1: right only on the third image
    report = evaluate_leakage(truth[:2], truth, prior=priors, true_labels=labels, classifier=_mean_intensity_classifier(8))
    # two reconstructions are matched to true images 0 and 1; their priors (0.7, 0.2) are both wrong
    assert sorted(g for _, g in report.matching) == [0, 1] and report.prior_attacker_accuracy == 0.0
    report = evaluate_leakage(truth, truth, prior=np.full((8, 8), 0.95), true_labels=labels, classifier=_mean_intensity_classifier(8))
    assert report.prior_attacker_accuracy == pytest.approx(2 / 3) and report.to_dict()["gia/prior_attacker_accuracy"] == pytest.approx(2 / 3)
    assert evaluate_leakage(truth, truth, true_labels=labels).prior_attacker_accuracy is None


def test_classifier_must_be_a_module():
    with pytest.raises(TypeError, match="classifier must be a torch.nn.Module"):
        compute_classifier_accuracy(lambda x: x, np.zeros((1, 4, 4)), [0])


# --- the report -------------------------------------------------------------------------------


def test_full_report_to_dict_has_every_key_and_is_json_safe(cxr, rng):
    site = cxr[:12]
    indices = np.array([3, 8, 1])
    labels = np.array([0, 1, 1])
    report = evaluate_leakage(
        _noisy(site[indices], 0.1, rng),
        site[indices],
        reconstructed_labels=labels,
        true_labels=labels,
        site_images=site,
        ground_truth_indices=indices,
        classifier=_mean_intensity_classifier(64),
        update_residual=np.float32(0.5),
        bn_residual=torch.tensor(0.25),
    )
    values = report.to_dict()
    assert set(values) == ALL_KEYS
    assert all(type(v) is float for v in values.values())
    assert json.loads(json.dumps(values, allow_nan=False)) == values
    assert values["gia/num_images"] == 3.0 and values["gia/bn_residual"] == 0.25
    assert len(report.per_image_ssim) == len(report.matching) == report.num_images == 3


def test_report_of_a_reconstruction_equal_to_the_truth_up_to_float32_rounding():
    # A perfect attack: SSIM 1 (not 1 + 2e-16, which made RDLV's range check raise).
    truth = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    reconstruction = np.float32(0.3) + (truth - np.float32(0.3))
    report = evaluate_leakage(reconstruction, truth)
    assert report.ssim == 1.0
    assert report.rdlv == pytest.approx((1.0 - report.prior_ssim) / report.prior_ssim)


def test_minimal_report_omits_none_values_and_stays_finite_for_exact_copies(rng):
    truth = rng.random((2, 8, 8))
    values = evaluate_leakage(truth, truth).to_dict()
    assert set(values) == {"gia/ssim", "gia/psnr", "gia/mse", "gia/rdlv", "gia/prior_ssim", "gia/num_images"}
    json.dumps(values, allow_nan=False)


def test_report_averages_over_matched_pairs_only(cxr, rng):
    truth = cxr[:5]
    rec = _noisy(truth[[4, 1]], 0.1, rng)
    report = evaluate_leakage(rec, truth)
    assert report.num_images == 2 and report.matching == ((0, 4), (1, 1))
    expected = [_ssim(rec[0], truth[4]), _ssim(rec[1], truth[1])]
    np.testing.assert_allclose(report.per_image_ssim, expected, rtol=1e-12)
    assert report.ssim == pytest.approx(np.mean(expected), rel=1e-12)
    assert report.mse == pytest.approx(np.mean([np.mean((rec[0] - truth[4]) ** 2), np.mean((rec[1] - truth[1]) ** 2)]))
    flat = np.full((64, 64), 0.5)
    assert report.prior_ssim == pytest.approx(np.mean([_ssim(flat, truth[4]), _ssim(flat, truth[1])]), rel=1e-12)


def test_report_is_frozen_and_rejects_non_finite_values():
    report = LeakageReport(0.5, 20.0, 0.01, 1.0, 0.25, None, None, None, (0.5,), ((0, 0),), None, None, 1)
    with pytest.raises(AttributeError):
        report.ssim = 1.0  # type: ignore[misc]
    with pytest.raises(DataError, match="rdlv must be finite"):
        LeakageReport(0.5, 20.0, 0.01, float("inf"), 0.25, None, None, None, (0.5,), ((0, 0),), None, None, 1)


def test_residual_only_report_keys():
    assert residual_only_report(0.5, 0.125) == {"gia/update_residual": 0.5, "gia/bn_residual": 0.125}
    assert residual_only_report(0.5, None) == {"gia/update_residual": 0.5}
    with pytest.raises(DataError, match="update_residual must be >= 0, got -1.0"):
        residual_only_report(-1.0, None)
    with pytest.raises(DataError, match="bn_residual must be finite"):
        residual_only_report(0.5, float("nan"))


def test_torch_and_numpy_inputs_give_equal_reports(cxr, rng):
    truth = cxr[:3].astype(np.float32)
    rec = _noisy(truth[[2, 0, 1]], 0.1, rng).astype(np.float32)
    expected = evaluate_leakage(rec, truth, true_labels=[0, 1, 1], reconstructed_labels=[1, 0, 1])
    got = evaluate_leakage(
        torch.from_numpy(rec)[:, None],
        torch.from_numpy(truth)[:, None],
        true_labels=torch.tensor([0, 1, 1]),
        reconstructed_labels=torch.tensor([1, 0, 1]),
    )
    assert got == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reconstructed_labels": [0, 1]}, "reconstructed_labels needs true_labels"),
        ({"classifier": torch.nn.Identity()}, "classifier needs true_labels"),
        ({"site_images": np.zeros((3, 8, 8))}, "site_images needs ground_truth_indices"),
        ({"ground_truth_indices": [0, 1]}, "ground_truth_indices needs site_images"),
    ],
)
def test_inputs_without_their_partner_raise_config_error(kwargs, message, rng):
    truth = rng.random((2, 8, 8))
    with pytest.raises(ConfigError, match=message):
        evaluate_leakage(truth, truth, **kwargs)


def test_evaluate_leakage_rejects_bad_inputs(rng):
    truth = rng.random((2, 8, 8))
    nan_rec = truth.copy()
    nan_rec[1, 2, 2] = np.nan
    with pytest.raises(DataError, match="reconstruction must be finite"):
        evaluate_leakage(nan_rec, truth)
    with pytest.raises(DataError, match=r"same size \(H, W\), got shapes \(2, 8, 8\) and \(2, 9, 9\)"):
        evaluate_leakage(truth, rng.random((2, 9, 9)))
    with pytest.raises(DataError, match="at least one non-empty image"):
        evaluate_leakage(np.zeros((0, 8, 8)), truth)
    with pytest.raises(DataError, match=r"true_labels must hold one label per true image \(2\), got 3"):
        evaluate_leakage(truth, truth, true_labels=[0, 1, 1], reconstructed_labels=[0, 1])


def test_metrics_package_imports_no_nvflare_and_no_other_layer():
    # Static, so it stays fast: every import in the package is stdlib, the scientific stack, or
    # nvflare_gia.errors / nvflare_gia.metrics, hence nvflare cannot come in through our own code.
    package = Path(leakage_module.__file__).parent
    allowed_third_party = {"numpy", "scipy", "skimage", "torch"}
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "nvflare_gia":
                    assert name == "nvflare_gia.errors" or name.startswith("nvflare_gia.metrics"), (path.name, name)
                else:
                    assert top in allowed_third_party or top in sys.stdlib_module_names, (path.name, name)


def test_docstring_examples_run():
    assert doctest.testmod(leakage_module, raise_on_error=False).failed == 0
