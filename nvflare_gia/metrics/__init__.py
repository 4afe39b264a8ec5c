"""Leakage metrics: image similarity, matching, RDLV/IIP and the leakage report (no nvflare import)."""

from nvflare_gia.metrics.image import PSNR_CAP_DB, SSIM_WIN_SIZE, ImageMetric, compute_mse, compute_psnr, compute_ssim
from nvflare_gia.metrics.leakage import (
    DEFAULT_PRIOR_VALUE,
    LeakageReport,
    compute_classifier_accuracy,
    compute_iip,
    compute_label_accuracy,
    compute_label_count_accuracy,
    compute_rdlv,
    evaluate_leakage,
    residual_only_report,
)
from nvflare_gia.metrics.matching import match_reconstructions

__all__ = [
    "DEFAULT_PRIOR_VALUE",
    "ImageMetric",
    "LeakageReport",
    "PSNR_CAP_DB",
    "SSIM_WIN_SIZE",
    "compute_classifier_accuracy",
    "compute_iip",
    "compute_label_accuracy",
    "compute_label_count_accuracy",
    "compute_mse",
    "compute_psnr",
    "compute_rdlv",
    "compute_ssim",
    "evaluate_leakage",
    "match_reconstructions",
    "residual_only_report",
]
