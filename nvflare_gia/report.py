"""Self-contained HTML and Markdown reports of gradient inversion leakage (no nvflare import).

Two sources:

* a FLARE run: the server widget's ``gia/metrics.jsonl`` and ``gia/<site>/round_<r>/`` outputs
  (:func:`write_run_report`): leakage per round (SSIM, PSNR and the RDLV of Hatamizadeh et al.,
  IEEE TMI 2023, against the prior), truth beside reconstruction for every site and round, a
  plain-language verdict per site, the defense each site applied and what it cost, and every
  failed, skipped or unfinished attack with its reason;
* a benchmark JSON (:func:`write_bench_report`): the privacy–utility plot of
  ``nvflare-gia bench defenses`` and the overhead bars of ``nvflare-gia bench overhead``.

Each report is one ``report.html`` (every image embedded as a base64 PNG data URI, no external
asset, readable offline), the PNG figures beside it and a ``summary.md``. A run report embeds the
attacked sites' training images: its files are written owner-only (0600), like the widget's.
Figures are drawn with matplotlib's Agg canvas, without pyplot, so no global backend is changed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import re
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nvflare_gia.audit import STOPPED_SHORT_FACTOR, stopped_short
from nvflare_gia.errors import DataError, load_json_file
from nvflare_gia.metrics import compute_ssim

__all__ = [
    "DEFAULT_OUT_DIR",
    "METRIC_FORMATS",
    "STOPPED_SHORT_FACTOR",
    "find_metrics_file",
    "format_metric",
    "leakage_verdict",
    "worst_rdlv",
    "write_bench_report",
    "write_run_report",
]

logger = logging.getLogger(__name__)

#: folder written under RUN_DIR when no ``out_dir`` is given
DEFAULT_OUT_DIR = "gia_report"
REPORT_HTML = "report.html"
SUMMARY_MD = "summary.md"
#: the widget's default ``output_dir`` and its metrics file (``nvflare_gia.flare.widget.METRICS_FILE``)
GIA_DIR = "gia"
METRICS_FILE = "metrics.jsonl"

#: how every number is printed, by metric name (``gia/`` prefix stripped): one home for the tables
METRIC_FORMATS: dict[str, str] = {
    "ssim": ".3f",
    "prior_ssim": ".3f",
    "rdlv": ".3f",
    "psnr": ".2f",
    "mse": ".4f",
    "iip": ".3f",
    "label_accuracy": ".3f",
    "label_count_accuracy": ".3f",
    "attacker_accuracy": ".3f",
    "prior_attacker_accuracy": ".3f",
    "balanced_attacker_accuracy": ".3f",
    "update_residual": ".3g",
    "bn_residual": ".3g",
    "matching_loss": ".3g",
    "truth_matching_loss": ".3g",
    "seconds": ".3g",
    "noise_norm": ".3g",
    "accuracy": ".3f",
    "f1": ".3f",
    "filter_seconds": ".3g",
    "numpy_add_seconds": ".3g",
    "local_epoch_seconds": ".3g",
    "ratio": ".1f",
}
_MISSING = "-"
_GRID_COLUMNS = 8
_BEST_COLOR, _WORST_COLOR = "#1a7f37", "#cf222e"
_STATUS_WORDS = {"failed": "attack failed", "skipped": "not attacked (skipped)", "not_finished": "attack not finished", "missing": "no update from this site"}
_PRIVATE_FILE = 0o600
_PRIVATE_DIR = 0o700


# --------------------------------------------------------------------------------------- formatting
def format_metric(key: str, value: Any) -> str:
    """Format a metric as every report table prints it.

    Args:
        key: the metric name, with or without the ``gia/`` prefix (``gia/ssim``, ``accuracy``).
        value: a number; None, NaN, infinities, booleans and non-numbers print as ``-``.

    Returns:
        The value formatted with ``METRIC_FORMATS[key]`` (``.4g`` for an unknown key).

    Example:
        >>> format_metric("gia/ssim", 0.12345), format_metric("psnr", 7.6), format_metric("rdlv", None)
        ('0.123', '7.60', '-')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
        return _MISSING
    name = key.split("/", 1)[1] if key.startswith("gia/") else key
    return format(float(value), METRIC_FORMATS.get(name, ".4g"))


def _with_stderr(run: Mapping[str, Any], key: str) -> str:
    """``format_metric`` of ``run[key]``, followed by ``± stderr`` when the run has one for ``key``."""
    text = format_metric(key, run.get(key))
    stderr = run.get("stderr")
    error = _number(stderr.get(key)) if isinstance(stderr, Mapping) else None
    return text if error is None or text == _MISSING else f"{text} ± {format_metric(key, error)}"


def _paired_difference(run: Mapping[str, Any], key: str) -> str:
    """``run["vs_none"][key]`` as ``+mean ± stderr (n)``: the seed-by-seed difference from no defense."""
    paired = run.get("vs_none")
    entry = paired.get(key) if isinstance(paired, Mapping) else None
    mean = _number(entry.get("mean")) if isinstance(entry, Mapping) else None
    if mean is None:
        return _MISSING
    error = _number(entry.get("stderr"))
    text = ("+" if mean >= 0 else "") + format_metric(key, mean)
    return f"{text}{'' if error is None else ' ± ' + format_metric(key, error)} (n={_text(entry.get('n'))})"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str:
    return _MISSING if value is None else str(value)


def _md_cell(value: Any) -> str:
    return _text(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    table_id: str,
    keys: Sequence[str] | None = None,
    row_attrs: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """An HTML table; ``keys`` become ``data-key`` on the cells, ``row_attrs`` ``data-*`` on the rows."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        attrs = "".join(f' data-{html.escape(k)}="{html.escape(str(v))}"' for k, v in (row_attrs[index] if row_attrs else {}).items())
        key_attrs = [f' data-key="{html.escape(k)}"' for k in keys] if keys else [""] * len(row)
        cells = "".join(f"<td{key_attrs[j]}>{html.escape(_text(cell))}</td>" for j, cell in enumerate(row))
        body.append(f"<tr{attrs}>{cells}</tr>")
    return f'<table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "_"


# ------------------------------------------------------------------------------------------ output
def _prepare_out(out_dir: Path) -> Path:
    """Create ``out_dir`` owner-only when missing; an existing folder keeps its mode."""
    if not out_dir.exists():
        out_dir.mkdir(parents=True, mode=_PRIVATE_DIR)
        os.chmod(out_dir, _PRIVATE_DIR)
    elif not out_dir.is_dir():
        raise DataError(f"report: out_dir must be a folder, got the file {str(out_dir)!r}.")
    return out_dir


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    os.chmod(path, _PRIVATE_FILE)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


class _Page:
    """Collects the HTML body, the Markdown summary and the PNG files of one report."""

    def __init__(self, out_dir: Path, title: str) -> None:
        self.out_dir = out_dir
        self.title = title
        self.html: list[str] = []
        self.md: list[str] = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        anchor_attr = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{anchor_attr}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + text, ""]

    def paragraph(self, text: str, css: str | None = None) -> None:
        css_attr = f' class="{css}"' if css else ""
        self.html.append(f"<p{css_attr}>{html.escape(text)}</p>")
        self.md += [text, ""]

    def bullets(self, items: Sequence[str]) -> None:
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md += [f"- {i}" for i in items] + [""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, table_id: str, keys=None, row_attrs=None) -> None:
        if not rows:
            self.paragraph("None.")
            return
        self.html.append(_html_table(headers, rows, table_id=table_id, keys=keys, row_attrs=row_attrs))
        self.md += [_md_table(headers, rows), ""]

    def image(self, file_name: str, data: bytes, caption: str, anchor: str | None = None) -> None:
        _write_private(self.out_dir / file_name, data)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        anchor_attr = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(
            f'<figure{anchor_attr}><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md += [f"![{_md_cell(caption)}]({file_name})", "", f"*{caption}*", ""]

    def write(self) -> Path:
        document = _HTML_TEMPLATE.format(title=html.escape(self.title), body="\n".join(self.html))
        path = self.out_dir / REPORT_HTML
        _write_private(path, document.encode("utf-8"))
        _write_private(self.out_dir / SUMMARY_MD, ("\n".join(self.md).rstrip() + "\n").encode("utf-8"))
        return path


_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }}
h1 {{ font-size: 1.7em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }}
h2 {{ font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }}
h3 {{ font-size: 1.05em; margin-top: 1.4em; }}
table {{ border-collapse: collapse; margin: .6em 0; font-size: .9em; }}
th, td {{ border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; }}
tbody tr:nth-child(even) {{ background: #fafbfc; }}
figure {{ margin: .8em 0; }}
figure img {{ max-width: 100%; border: 1px solid #d0d7de; }}
figcaption {{ font-size: .88em; color: #57606a; }}
.warning {{ background: #fff8c5; border: 1px solid #d4a72c; padding: .6em .9em; }}
.meta {{ color: #57606a; font-size: .9em; }}
td:first-child {{ white-space: nowrap; }}
td[data-key="verdict"] {{ min-width: 16em; }}
tr[data-verdict="leaks"] td[data-key="verdict"] {{ background: #ffebe9; font-weight: bold; }}
tr[data-verdict="prior"] td[data-key="verdict"] {{ background: #dafbe1; }}
tr[data-verdict="no_result"] td[data-key="verdict"] {{ background: #fff8c5; }}
tr[data-verdict="lower_bound"] td[data-key="verdict"] {{ background: #fff8c5; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


# ------------------------------------------------------------------------------------- run records
def find_metrics_file(run_dir: str | os.PathLike) -> Path:
    """Find the widget's ``metrics.jsonl`` in or below ``run_dir``.

    Args:
        run_dir: the server's run directory (``<workspace>/server/simulate_job``), the simulator
            workspace, the widget's ``gia`` folder itself, or a folder downloaded with
            ``nvflare job download`` (``<out>/<job_id>/workspace``).

    Returns:
        ``run_dir/metrics.jsonl`` when present, else the single ``gia/metrics.jsonl`` below ``run_dir``.

    Raises:
        DataError: if ``run_dir`` is not a folder, holds no ``gia/metrics.jsonl``, or holds several
            (several jobs: pass one of them).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"report: run_dir must be an existing folder, got {str(root)!r}.")
    if (root / METRICS_FILE).is_file():
        return root / METRICS_FILE
    found = sorted(p for p in root.rglob(METRICS_FILE) if p.parent.name == GIA_DIR and p.is_file())
    if not found:
        raise DataError(
            f"report: no {GIA_DIR}/{METRICS_FILE} found in or below {str(root)!r}; pass the server's run directory "
            f"(<workspace>/server/simulate_job), the simulator workspace or a downloaded job folder of a job that ran "
            f"the GradientInversionWidget."
        )
    if len(found) > 1:
        listing = ", ".join(repr(str(p.parent.parent)) for p in found)
        raise DataError(f"report: {str(root)!r} holds {len(found)} runs with {GIA_DIR}/{METRICS_FILE}; pass one of them: {listing}.")
    return found[0]


def _load_records(metrics_file: Path) -> list[dict[str, Any]]:
    """The widget's records, one per (client, round), the last line winning, sorted by site and round."""
    from nvflare_gia.cli import read_metrics_lines  # the one reader that tolerates a truncated last line

    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for index, record in enumerate(read_metrics_lines(metrics_file), start=1):
        round_index = record.get("round") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(record.get("client"), str) or type(round_index) is not int:
            logger.warning("%s: record %d has no client name or integer round; left out of the report", metrics_file, index)
            continue
        latest[(record["client"], round_index)] = record
    return [latest[key] for key in sorted(latest)]


def _record_file(record: Mapping[str, Any], gia_dir: Path, kind: str, name: str) -> Path | None:
    """The record's output file: below the found ``gia`` folder first (a downloaded or moved run),
    else the absolute path the widget recorded."""
    candidates = [gia_dir / record["client"] / f"round_{record['round']}" / name]
    recorded = (record.get("files") or {}).get(kind) if isinstance(record.get("files"), Mapping) else None
    if isinstance(recorded, str):
        candidates.append(Path(recorded))
    return next((p for p in candidates if p.is_file()), None)


def leakage_verdict(record: Mapping[str, Any]) -> tuple[str, str]:
    """The verdict on one widget record: its kind and a sentence.

    Kinds: ``leaks`` (RDLV > 0), ``prior`` (RDLV <= 0), ``lower_bound`` (RDLV <= 0, but the true
    images fit the update at least :data:`STOPPED_SHORT_FACTOR` times better than the
    reconstruction, so RDLV is no evidence of privacy) and ``no_result`` (no attack, no score).

    Args:
        record: one line of the widget's metrics file.

    Returns:
        ``(kind, text)``.
    """
    status = record.get("gia/status")
    if status != "ok":
        reason = record.get("reason") or "no reason recorded"
        return "no_result", f"{_STATUS_WORDS.get(status, f'status {status!r}')}: {reason}"
    rdlv = _number(record.get("gia/rdlv"))
    if rdlv is None:
        return "no_result", "not measured: no ground truth (the widget's audit mode is off)"
    if rdlv > 0:
        return "leaks", "leaks recognisable images (RDLV > 0): the reconstruction resembles the site's images more than the prior does"
    attack_loss, truth_loss = _number(record.get("gia/matching_loss")), _number(record.get("gia/truth_matching_loss"))
    if stopped_short(attack_loss, truth_loss):
        return "lower_bound", (
            f"no more than the prior (RDLV <= 0), but only a lower bound: the true images fit the update better than the "
            f"reconstruction (matching loss {format_metric('matching_loss', truth_loss)} against "
            f"{format_metric('matching_loss', attack_loss)}), so a stronger attack may recover more"
        )
    return "prior", "no more than the prior (RDLV <= 0)"


def worst_rdlv(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, int]]:
    """The highest RDLV of each site over its scored rounds, so a leak in an early round is not hidden.

    Args:
        records: widget records (``client``, ``round``, ``gia/status``, ``gia/rdlv``).

    Returns:
        ``{client: (rdlv, round)}`` for the clients with at least one finite RDLV.
    """
    worst: dict[str, tuple[float, int]] = {}
    for record in records:
        value = _number(record.get("gia/rdlv"))
        if record.get("gia/status") == "ok" and value is not None:
            site = record["client"]
            if site not in worst or (value, record["round"]) > worst[site]:
                worst[site] = (value, int(record["round"]))
    return worst


def _defense_name(record: Mapping[str, Any]) -> str:
    if "gia_defense" not in record:
        return "unknown"
    defense = record.get("gia_defense")
    if not isinstance(defense, Mapping):
        return "none"
    params = defense.get("params")
    params_text = json.dumps(params, sort_keys=True) if params else ""
    return f"{defense.get('name', '?')} {params_text}".strip()


def _site_colors(sites: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {site: palette(i % 10) for i, site in enumerate(sites)}


# ----------------------------------------------------------------------------------- run figures
def _leakage_figure(records: Sequence[Mapping[str, Any]], sites: Sequence[str]) -> tuple[bytes, str] | None:
    """SSIM / PSNR / RDLV per round for each site, with the prior (prior SSIM; RDLV = 0)."""
    ok = [r for r in records if r.get("gia/status") == "ok" and r["round"] >= 0]
    panels = [(k, label) for k, label in (("gia/ssim", "SSIM (higher = more leakage)"), ("gia/psnr", "PSNR in dB (higher = more leakage)"),
              ("gia/rdlv", "RDLV (> 0 = more than the prior)")) if any(_number(r.get(k)) is not None for r in ok)]
    note = "Dashed lines: each site's prior (SSIM of the attacker's prior image; RDLV = 0)."
    if not panels:
        panels = [(k, label) for k, label in (("gia/update_residual", "update residual (lower = closer fit)"),
                  ("gia/bn_residual", "BN residual (lower = closer fit)")) if any(_number(r.get(k)) is not None for r in ok)]
        note = "No ground truth (audit mode off): the attack's matching residuals, not leakage."
    if not panels:
        return None
    colors = _site_colors(sites)
    figure = Figure(figsize=(4.0 * len(panels), 3.9), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        for site in sites:
            points = [(r["round"], _number(r.get(key))) for r in ok if r["client"] == site and _number(r.get(key)) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", color=colors[site], label=site)
            if key == "gia/ssim":
                prior = [(r["round"], _number(r.get("gia/prior_ssim"))) for r in ok if r["client"] == site]
                prior = [(x, y) for x, y in prior if y is not None]
                if prior:
                    xs, ys = zip(*prior)
                    ax.plot(xs, ys, linestyle="--", marker=".", color=colors[site], alpha=0.7, label=f"{site} prior")
        if key == "gia/rdlv":
            ax.axhline(0.0, color="black", linestyle="--", linewidth=1.2, label="prior (RDLV = 0)")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("FL round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    figure.suptitle("Gradient inversion leakage per round (server-side attack on each site's update)", fontsize=11)
    return _png(figure), note


def _display(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W) gray or (N, H, W, 3) colour, clipped to [0, 1]."""
    if images.ndim == 4 and images.shape[1] == 3:
        return np.clip(images.transpose(0, 2, 3, 1), 0, 1)
    if images.ndim == 4:
        return np.clip(images.mean(axis=1), 0, 1)
    return np.clip(images, 0, 1)


def _gray(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=1) if images.ndim == 4 else images


def _grid_figure(saved: Mapping[str, np.ndarray], title: str) -> tuple[bytes, str]:
    """Truth above reconstruction for each matched pair, the best and worst pair (per-image SSIM) marked."""
    reconstruction = np.asarray(saved["reconstruction"], dtype=np.float64)
    truth = np.asarray(saved["truth"], dtype=np.float64) if "truth" in saved else None
    labels = np.asarray(saved["labels"]) if "labels" in saved else None
    truth_labels = np.asarray(saved["truth_labels"]) if "truth_labels" in saved else None
    count = len(reconstruction) if truth is None else min(len(reconstruction), len(truth))
    scores = None
    if truth is not None and count:
        try:
            scores = compute_ssim(_gray(reconstruction[:count]), _gray(truth[:count]))
        except (ValueError, TypeError) as e:  # DataError is a ValueError
            logger.warning("%s: per-image SSIM not computed: %s", title, e)
    best = int(np.argmax(scores)) if scores is not None and count > 1 else None
    worst = int(np.argmin(scores)) if scores is not None and count > 1 and np.ptp(scores) > 0 else None
    rows_per_block = 2 if truth is not None else 1
    columns = max(1, min(count, _GRID_COLUMNS))
    blocks = max(1, math.ceil(count / _GRID_COLUMNS))
    figure = Figure(figsize=(max(3.2, 1.45 * columns + 0.5), 1.6 * rows_per_block * blocks + 0.6), layout="constrained")
    axes = figure.subplots(rows_per_block * blocks, columns, squeeze=False)
    shown_truth, shown_rec = (_display(truth) if truth is not None else None), _display(reconstruction)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    for i in range(count):
        block, column = divmod(i, _GRID_COLUMNS)
        pair_axes = []
        if truth is not None:
            ax_truth = axes[block * 2, column]
            ax_truth.imshow(shown_truth[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            pair_axes.append(ax_truth)
        ax_rec = axes[block * rows_per_block + rows_per_block - 1, column]
        ax_rec.imshow(shown_rec[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        pair_axes.append(ax_rec)
        mark, color = ("BEST ", _BEST_COLOR) if i == best else (("WORST ", _WORST_COLOR) if i == worst else ("", "black"))
        head = f"{mark}#{i}" + (f" SSIM {scores[i]:.3f}" if scores is not None else "")
        pair_axes[0].set_title(head, fontsize=7.5, color=color, fontweight="bold" if mark else "normal")
        label_text = []
        if truth_labels is not None and i < len(truth_labels):
            label_text.append(f"true {truth_labels[i]}")
        if labels is not None and i < len(labels):
            label_text.append(f"attack {labels[i]}")
        for ax in pair_axes:
            ax.set_axis_on()
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3.0 if mark else 0.5)
        if label_text:
            ax_rec.set_xlabel(" / ".join(label_text), fontsize=7)
        if column == 0:
            if truth is not None:
                axes[block * 2, 0].set_ylabel("truth", fontsize=8)
            ax_rec.set_ylabel("attack", fontsize=8)
    figure.suptitle(title, fontsize=9.5)
    if scores is None:
        caption = f"{count} reconstruction(s); no true images saved (audit mode off), so no per-image SSIM."
    else:
        caption = f"{count} matched pair(s), truth above attack; per-image SSIM mean {float(np.mean(scores)):.3f}"
        caption += f"; best pair #{best} (SSIM {scores[best]:.3f}, green)" if best is not None else ""
        caption += f", worst pair #{worst} (SSIM {scores[worst]:.3f}, red)." if worst is not None else "."
    return _png(figure), caption


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        logger.warning("%s could not be read: %s", path, e)
        return None
    if "reconstruction" not in arrays or arrays["reconstruction"].ndim not in (3, 4) or len(arrays["reconstruction"]) == 0:
        logger.warning("%s holds no non-empty (N, C, H, W) 'reconstruction' array", path)
        return None
    return arrays


# ---------------------------------------------------------------------------------- run report
_LAST_COLUMNS = (
    ("site", "client"), ("round", "round"), ("status", "gia/status"), ("images", "num_images"), ("batch", "batch_size"),
    ("SSIM", "gia/ssim"), ("prior SSIM", "gia/prior_ssim"), ("RDLV", "gia/rdlv"), ("PSNR dB", "gia/psnr"), ("MSE", "gia/mse"),
    ("IIP", "gia/iip"), ("label acc.", "gia/label_accuracy"),
    ("label counts", "gia/label_count_accuracy"), ("defense", "gia_defense"), ("verdict", "verdict"),
    ("worst RDLV (round)", "worst_rdlv"),
)
_ALL_COLUMNS = (
    ("site", "client"), ("round", "round"), ("status", "gia/status"), ("images", "num_images"), ("SSIM", "gia/ssim"),
    ("prior SSIM", "gia/prior_ssim"), ("RDLV", "gia/rdlv"), ("PSNR dB", "gia/psnr"), ("MSE", "gia/mse"), ("IIP", "gia/iip"),
    ("label acc.", "gia/label_accuracy"), ("label counts", "gia/label_count_accuracy"), ("update residual", "gia/update_residual"), ("matching loss", "gia/matching_loss"),
    ("truth's matching loss", "gia/truth_matching_loss"), ("attack s", "gia/seconds"),
)


def _cell(record: Mapping[str, Any], key: str) -> str:
    if key == "verdict":
        return leakage_verdict(record)[1]
    if key == "gia_defense":
        return _defense_name(record)
    if key == "worst_rdlv":
        return _text(record.get("_worst_rdlv"))
    if key.startswith("gia/") and key != "gia/status":
        return format_metric(key, record.get(key))
    return _text(record.get(key))


def _records_table(page: _Page, records: Sequence[Mapping[str, Any]], columns, table_id: str) -> None:
    page.table(
        [h for h, _ in columns],
        [[_cell(r, k) for _, k in columns] for r in records],
        table_id=table_id,
        keys=[k for _, k in columns],
        row_attrs=[{"site": r["client"], "round": r["round"], "verdict": leakage_verdict(r)[0]} for r in records],
    )


def _defense_rows(records: Sequence[Mapping[str, Any]], sites: Sequence[str]) -> list[list[str]]:
    rows = []
    for site in sites:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            if record["client"] == site and "gia_defense" in record:
                groups.setdefault(_defense_name(record), []).append(record)
        if not groups:
            rows.append([site, "unknown (no attacked round recorded it)", _MISSING, _MISSING, _MISSING, _MISSING])
            continue
        for name, group in groups.items():
            defenses = [r["gia_defense"] for r in group if isinstance(r.get("gia_defense"), Mapping)]
            seconds = [s for s in (_number(d.get("seconds")) for d in defenses) if s is not None]
            norms = [n for n in (_number(d.get("noise_norm")) for d in defenses) if n is not None]
            rows.append([
                site,
                "none (no defense filter on the update)" if name == "none" else name,
                ", ".join(str(r["round"]) for r in group),
                format_metric("seconds", float(np.mean(seconds)) if seconds else None),
                format_metric("seconds", max(seconds) if seconds else None),
                format_metric("noise_norm", float(np.mean(norms)) if norms else None),
            ])
    return rows


def write_run_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the leakage report of one FLARE run: ``report.html``, ``summary.md`` and the PNG figures.

    Reads only files (``gia/metrics.jsonl``, ``gia/<site>/round_<r>/reconstruction.npz`` or
    ``grid.png``); a truncated last line of ``metrics.jsonl`` (a killed server) is skipped. The
    report embeds the attacked sites' training images: keep it where the reconstructions are.

    Args:
        run_dir: where to look for ``gia/metrics.jsonl`` (see :func:`find_metrics_file`).
        out_dir: output folder; default ``<run_dir>/gia_report``. Created owner-only when missing.

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: if no (or more than one) ``gia/metrics.jsonl`` is found, or it holds no record.

    Example:
        >>> from nvflare_gia.report import write_run_report
        >>> write_run_report("gia_runs/demo/simulator/server/simulate_job")  # doctest: +SKIP
        PosixPath('gia_runs/demo/simulator/server/simulate_job/gia_report/report.html')
    """
    metrics_file = find_metrics_file(run_dir)
    gia_dir = metrics_file.parent
    records = _load_records(metrics_file)
    if not records:
        raise DataError(f"report: {str(metrics_file)!r} (found below {str(run_dir)!r}) holds no readable record.")
    out = _prepare_out(Path(out_dir) if out_dir is not None else Path(run_dir) / DEFAULT_OUT_DIR)
    sites = sorted({r["client"] for r in records})
    page = _Page(out, "Gradient inversion leakage report")
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record.get("gia/status"))] = statuses.get(str(record.get("gia/status")), 0) + 1
    attacked_rounds = sorted({r["round"] for r in records if r["round"] >= 0})
    page.paragraph(
        f"Source: {metrics_file}. Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. {len(records)} record(s): "
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + f"; sites {', '.join(sites)}; rounds {', '.join(map(str, attacked_rounds)) or _MISSING}.",
        css="meta",
    )
    page.paragraph(
        "This report contains the attacked sites' training images and their reconstructions: handle it as patient data "
        "and keep it on the server side.",
        css="warning",
    )
    page.heading("How to read it")
    page.bullets([
        "The server attacked each selected site's model update and tried to rebuild the site's training images from it.",
        "SSIM (0 to 1) and PSNR (dB) compare each reconstruction with the true image: higher means more leakage.",
        (
            "The prior is the attacker's starting image (flat gray or a mean image), which reveals nothing about a patient. "
            "RDLV = (SSIM of the reconstruction - SSIM of the prior) / SSIM of the prior (Hatamizadeh et al., IEEE TMI 2023): "
            "above 0 the reconstruction shows more of the patient's image than the prior does."
        ),
        (
            "IIP: share of reconstructions whose closest image in the site's data is its own true image. "
            "Label acc.: share of labels the attack recovered."
        ),
    ])

    last: dict[str, Mapping[str, Any]] = {}
    for record in records:  # sorted by round: the last attacked round wins, round -1 only when alone
        if record["client"] not in last or record["round"] >= 0:
            last[record["client"]] = record
    worst = {site: f"{format_metric('rdlv', value)} ({round_index})" for site, (value, round_index) in worst_rdlv(records).items()}
    page.heading("Verdict per site (last round)")
    page.paragraph("The verdict reads the last attacked round; the last column is the highest RDLV of any round, so a leak "
                   "in an earlier round is not hidden.")
    _records_table(page, [{**last[s], "_worst_rdlv": worst.get(s)} for s in sites], _LAST_COLUMNS, "last-round")

    page.heading("Leakage per round")
    figure = _leakage_figure(records, sites)
    if figure is None:
        page.paragraph("No attack finished: nothing to plot.")
    else:
        page.image("leakage_per_round.png", figure[0], figure[1], anchor="leakage-per-round")

    page.heading("Defense and its cost")
    page.paragraph("What each site's result filter recorded in the update (gia_defense): its parameters, the seconds it took "
                   "per round and the norm of the noise it added.")
    page.table(["site", "defense", "rounds", "filter s/round (mean)", "filter s/round (max)", "noise norm (mean)"],
               _defense_rows(records, sites), table_id="defenses")

    page.heading("Failed, skipped and unfinished attacks")
    problems = [r for r in records if r.get("gia/status") != "ok"]
    page.table(["site", "round", "status", "reason"],
               [[r["client"], r["round"], _text(r.get("gia/status")), _text(r.get("reason"))] for r in problems],
               table_id="problems", row_attrs=[{"site": r["client"], "round": r["round"]} for r in problems])

    page.heading("All records")
    _records_table(page, records, _ALL_COLUMNS, "all-records")

    page.heading("Reconstructions")
    page.paragraph("For each site and round: the true training images (top) above what the attack rebuilt (bottom), matched "
                   "pairwise. The pair with the highest per-image SSIM is framed green, the lowest red.")
    for record in records:
        if record["round"] < 0 or record.get("gia/status") != "ok":
            continue
        site, round_index = record["client"], record["round"]
        anchor = f"grid-{_safe_name(site)}-round-{round_index}"
        page.heading(f"{site}, round {round_index}", level=3)
        file_name = f"grid_{_safe_name(site)}_round_{round_index}.png"
        npz = _record_file(record, gia_dir, "npz", "reconstruction.npz")
        saved = _load_npz(npz) if npz is not None else None
        if saved is not None:
            data, caption = _grid_figure(saved, f"{site}, round {round_index}: truth (top) vs attack (bottom)")
            page.image(file_name, data, caption, anchor=anchor)
            continue
        png = _record_file(record, gia_dir, "png", "grid.png")
        if png is not None:
            page.image(file_name, png.read_bytes(), "The widget's grid.png (truth above attack); reconstruction.npz missing, "
                       "so the best and worst pair are not marked.", anchor=anchor)
        else:
            page.paragraph(f"No reconstruction.npz or grid.png found for {site}, round {round_index}.")
    path = page.write()
    logger.info("leakage report: %s", path)
    return path


# --------------------------------------------------------------------------------- bench report
_RUN_KEYS = ("defense", "params", "accuracy", "ssim")


def _load_bench(bench_json: Path) -> dict[str, Any]:
    content = load_json_file(bench_json, "report", "bench_json")
    problems = []
    if not isinstance(content, dict) or not (isinstance(content.get("runs"), list) or isinstance(content.get("overhead"), list)):
        raise DataError(f"report: {str(bench_json)!r} must hold a 'runs' list (bench defenses) or an 'overhead' list (bench overhead).")
    for i, run in enumerate(content.get("runs") or []):
        missing = [k for k in _RUN_KEYS if not isinstance(run, dict) or k not in run]
        if missing:
            problems.append(f"runs[{i}] lacks {missing}")
    for i, row in enumerate(content.get("overhead") or []):
        missing = [k for k in ("filter", "parameters", "seconds") if not isinstance(row, dict) or k not in row]
        if missing:
            problems.append(f"overhead[{i}] lacks {missing}")
    if problems:
        raise DataError(f"report: {str(bench_json)!r} is not a benchmark output: " + "; ".join(problems) + ".")
    return content


def _params_text(params: Any, defense: str = "") -> str:
    if defense == "none":
        return _MISSING
    if not params:
        return "defaults"
    if isinstance(params, Mapping):
        return ", ".join(f"{k}={v}" for k, v in params.items())
    return str(params)


def _privacy_utility_figure(runs: Sequence[Mapping[str, Any]], picks: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    panels = [(k, label) for k, label in (("ssim", "attack SSIM (higher = more leakage)"), ("rdlv", "attack RDLV (> 0 = more than the prior)"))
              if any(_number(r.get(k)) is not None and _number(r.get("accuracy")) is not None for r in runs)]
    if not panels:
        return None
    defenses = list(dict.fromkeys(r["defense"] for r in runs if r["defense"] != "none"))
    colors = _site_colors(defenses)
    figure = Figure(figsize=(6.0 * len(panels), 4.6), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        for name in defenses:
            points = [(_number(r.get("accuracy")), _number(r.get(key)), r.get("params")) for r in runs if r["defense"] == name]
            points = [p for p in points if p[0] is not None and p[1] is not None]
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colors[name], label=name)
            for index, (x, y, params) in enumerate(points):  # alternate sides: settings often share an accuracy
                offset = (6, 5 if index % 2 else -11)
                ax.annotate(_params_text(params), (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=colors[name])
        for run in runs:
            if run["defense"] == "none" and _number(run.get("accuracy")) is not None and _number(run.get(key)) is not None:
                ax.scatter([run["accuracy"]], [run[key]], marker="*", s=260, color="black", zorder=5, label="no defense")
        ringed = False
        for name, pick in picks.items():
            if name == "none" or not isinstance(pick, Mapping):
                continue
            x, y = _number(pick.get("accuracy")), _number(pick.get(key))
            if x is not None and y is not None:
                ax.scatter([x], [y], s=330, facecolors="none", edgecolors=colors.get(name, "black"), linewidths=2.2, zorder=6,
                           label=None if ringed else "equal-utility setting")
                ringed = True
        if key == "rdlv":
            ax.axhline(0.0, color="black", linestyle="--", linewidth=1.2, label="prior (RDLV = 0)")
        ax.set_xlabel("test accuracy of the final global model (higher = more utility)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    figure.suptitle("Privacy-utility trade-off (down and right is better)", fontsize=11)
    return _png(figure)


def _overhead_label(row: Mapping[str, Any]) -> str:
    parameters = _number(row.get("parameters"))
    size = f"{parameters / 1e6:.1f}M params" if parameters is not None else ""
    return "\n".join(part for part in (str(row.get("filter")), str(row.get("model") or ""), size) if part)


def _overhead_figure(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    rows = [r for r in rows if _number(r.get("seconds")) is not None and _number(r.get("seconds")) > 0]
    if not rows:
        return None
    figure = Figure(figsize=(max(6.0, 1.5 * len(rows) + 2.0), 4.6), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(rows))
    width = 0.38
    ax.bar(positions - width / 2, [r["seconds"] for r in rows], width, color="#0969da", label="defense (per update)")
    reference_labelled = set()
    for i, row in enumerate(rows):
        for key, color, label in (("numpy_add_seconds", "#8c959f", "one NumPy addition"), ("local_epoch_seconds", "#bf8700", "one local epoch")):
            value = _number(row.get(key))
            if value is not None and value > 0:
                ax.bar([i + width / 2], [value], width, color=color, label=None if key in reference_labelled else label)
                reference_labelled.add(key)
                break
    ax.set_yscale("log")
    ax.set_xticks(positions, [_overhead_label(r) for r in rows], fontsize=8)
    ax.set_ylabel("seconds (log scale)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("What each defense costs per round, beside its reference", fontsize=11)
    return _png(figure)


def write_bench_report(bench_json: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the report of a benchmark JSON: ``report.html``, ``summary.md`` and the PNG figures.

    ``nvflare-gia bench defenses`` output (``runs``, ``equal_utility``, ``protocol``) gives the
    privacy–utility plot (attack SSIM and RDLV vs test accuracy, one curve per defense, the
    no-defense point and each defense's equal-utility setting marked) and the runs table;
    ``nvflare-gia bench overhead`` output (``overhead``) gives the cost bars and table.

    Args:
        bench_json: the benchmark's JSON file.
        out_dir: output folder; default ``<bench_json without suffix>_report`` beside it.

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: if the file is missing, not JSON, or holds neither a valid ``runs`` nor
            ``overhead`` list (every problem is listed).

    Example:
        >>> from nvflare_gia.report import write_bench_report
        >>> write_bench_report("bench/defenses.json")  # doctest: +SKIP
        PosixPath('bench/defenses_report/report.html')
    """
    path = Path(bench_json)
    content = _load_bench(path)
    out = _prepare_out(Path(out_dir) if out_dir is not None else path.with_name(path.stem + "_report"))
    page = _Page(out, "Gradient inversion defense benchmark")
    page.paragraph(f"Source: {path}. Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.", css="meta")
    protocol = content.get("protocol")
    if isinstance(protocol, Mapping) and protocol:
        page.paragraph("Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()) + ".", css="meta")
        if protocol.get("model_learned") is False:
            page.paragraph(f"Warning: the undefended model did not clearly beat always predicting the majority class "
                           f"(accuracy {protocol.get('majority_accuracy')}), so accuracy differences are noise "
                           "and the equal-utility picks say little; rerun with more rounds or on data where the model learns.")
    runs = content.get("runs") or []
    if runs:
        picks = content.get("equal_utility") if isinstance(content.get("equal_utility"), Mapping) else {}
        page.heading("Privacy-utility")
        page.paragraph("Each point is one defense setting: the test accuracy of the final global model against the attack's "
                       "SSIM and RDLV on the high-risk site's defended update. The star is no defense; a ring marks each "
                       "defense's equal-utility setting (its strongest within the accuracy tolerance of no defense). "
                       "RDLV <= 0 means the attack rebuilt no more than its prior. Likewise, the reference classifier's "
                       "accuracy on the reconstructions shows leakage only above its accuracy on the attacker's prior.")
        figure = _privacy_utility_figure(runs, picks)
        if figure is None:
            page.paragraph("No run has both an accuracy and an attack score: nothing to plot.")
        else:
            page.image("privacy_utility.png", figure, "Attack SSIM and RDLV vs test accuracy, one curve per defense.", anchor="privacy-utility")
        balanced = any(_number(r.get("balanced_attacker_accuracy")) is not None for r in runs)
        columns = [
            ("accuracy", "accuracy"), ("f1", "F1"), ("ssim", "SSIM"), ("rdlv", "RDLV"), ("psnr", "PSNR dB"), ("mse", "MSE"),
            ("attacker_accuracy", "attacker acc."), ("prior_attacker_accuracy", "attacker acc. on prior"),
            *([("balanced_attacker_accuracy", "balanced attacker acc.")] if balanced else []), ("filter_seconds", "filter s"),
        ]
        keys = tuple(key for key, _ in columns)
        headers = ["defense", "params", *(header for _, header in columns), "equal utility"]

        def pick_text(run: Mapping[str, Any]) -> str:
            if run["defense"] == "none":
                return "baseline"
            pick = picks.get(run["defense"])
            return "yes" if isinstance(pick, Mapping) and pick.get("params") == run.get("params") else ""

        page.heading("Runs")
        if any(isinstance(r.get("stderr"), Mapping) for r in runs):
            page.paragraph("Values are means over the seeds; ± gives the standard error over the seeds.")
        if balanced:
            page.paragraph("Balanced attacker accuracy averages attacker accuracy per class of the attacked image, then over "
                           "the classes, so it does not depend on how many seeds drew each class; a classifier that gives every "
                           "featureless reconstruction the same class scores 1 / (number of classes) on it.")
        paired_keys = ("accuracy", "ssim", "attacker_accuracy") if any(isinstance(r.get("vs_none"), Mapping) for r in runs) else ()
        if paired_keys:
            headers += ["Δ accuracy vs none", "Δ SSIM vs none", "Δ attacker acc. vs none"]
            page.paragraph("Δ columns: the mean ± standard error of the seed-by-seed differences from no defense over the n seeds "
                           "both have, which removes what a seed does to both runs (which image is attacked, how well the model learns); "
                           "equal utility compares the paired accuracy.")
        page.table(
            headers,
            [
                [r["defense"], _params_text(r.get("params"), r["defense"]), *(_with_stderr(r, k) for k in keys), pick_text(r),
                 *(_paired_difference(r, k) for k in paired_keys)]
                for r in runs
            ],
            table_id="runs", keys=["defense", "params", *keys, "equal_utility", *(f"vs_none_{k}" for k in paired_keys)],
        )
    overhead = content.get("overhead") or []
    if overhead:
        page.heading("Overhead")
        page.paragraph("Seconds each defense adds to one update, beside its floor: one NumPy addition over the same arrays "
                       "for the noise defenses, one local training epoch for the data-aware ones.")
        figure = _overhead_figure(overhead)
        if figure is not None:
            page.image("overhead.png", figure, "Defense seconds per update (log scale).", anchor="overhead")
        keys = ("seconds", "numpy_add_seconds", "local_epoch_seconds", "ratio")
        page.table(
            ["filter", "model", "parameters", "seconds", "NumPy add s", "local epoch s", "ratio"],
            [[r["filter"], _text(r.get("model")), _text(r.get("parameters")), *(format_metric(k, r.get(k)) for k in keys)] for r in overhead],
            table_id="overhead", keys=["filter", "model", "parameters", *keys],
        )
    result = page.write()
    logger.info("benchmark report: %s", result)
    return result
