"""The ``nvflare-gia`` command: demo, simulate, poc and bench."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from nvflare_gia.errors import GIAError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("nvflare_gia.cli")

DEFAULT_DEMO_JOB = "fedavg_cxr_audit"
WIDGET_ID = "gia_widget"


def _int_at_least(minimum: int):
    """An argparse ``type`` accepting integers >= ``minimum``; the error names the allowed values."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    """An argparse ``type`` accepting a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def _data_spec(data: str | None, seed: int):
    from nvflare_gia.data import DataSpec

    return DataSpec(source=data or "synthetic", seed=seed)


def _accuracy_table(scalars: dict[str, list[tuple[int, float]]]) -> str:
    """Format per-round, per-site accuracy/F1 of the global model as a text table."""
    sites = sorted({tag.split("/")[0] for tag in scalars if tag.endswith("/accuracy")})
    rounds = sorted({step for tag, values in scalars.items() if tag.endswith("/accuracy") for step, _ in values})
    lines = ["round  " + "  ".join(f"{site:>16}" for site in sites) + "  (global model accuracy / F1 on each site's validation share)"]
    for r in rounds:
        cells = []
        for site in sites:
            acc = dict(scalars.get(f"{site}/accuracy", [])).get(r)
            f1 = dict(scalars.get(f"{site}/f1", [])).get(r)
            cells.append(f"{acc:7.3f} / {f1:6.3f}" if acc is not None and f1 is not None else f"{'-':>16}")
        lines.append(f"{r:5d}  " + "  ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def read_metrics_lines(path: Path) -> list[dict]:
    """Read the widget's ``metrics.jsonl``, skipping a truncated last line (a killed server)."""
    import json

    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping an unreadable line in %s", path)
    return records


#: The demo table's shorter wording of the :func:`nvflare_gia.report.leakage_verdict` kinds whose
#: sentence is too long for a terminal line; the others print the report's sentence.
_SHORT_VERDICTS = {
    "leaks": "leaks recognisable images (RDLV > 0)",
    "lower_bound": "RDLV <= 0, but a lower bound: the truth fits the update better",
}


def _leakage_table(records: list[dict]) -> str:
    """Format the last attacked round of each site as a text table, with each site's worst RDLV."""
    from nvflare_gia.report import leakage_verdict, worst_rdlv

    last: dict[str, dict] = {}
    for record in records:
        if record.get("round", -1) >= last.get(record["client"], {}).get("round", -1):
            last[record["client"]] = record
    header = f"{'site':<8} {'round':>5} {'images':>6} {'status':>8} {'SSIM':>6} {'prior':>6} {'RDLV':>6} {'PSNR':>6} {'labels':>6} {'worst RDLV (round)':>18}  verdict"
    lines = [header]
    worst_by_site = worst_rdlv(records)
    for client, r in sorted(last.items()):
        def cell(key: str, fmt: str = "6.3f") -> str:
            value = r.get(f"gia/{key}")
            return format(value, fmt) if isinstance(value, (int, float)) else f"{'-':>6}"

        kind, text = leakage_verdict(r)
        verdict = _SHORT_VERDICTS.get(kind, text)
        worst = f"{worst_by_site[client][0]:+.3f} ({worst_by_site[client][1]})" if client in worst_by_site else "-"
        lines.append(
            f"{client:<8} {r.get('round', -1):>5} {r.get('num_images', '-'):>6} {r.get('gia/status', '?'):>8} {cell('ssim')} {cell('prior_ssim')} "
            f"{cell('rdlv')} {cell('psnr', '6.2f')} {cell('label_accuracy')} {worst:>18}  {verdict}"
        )
    return "\n".join(lines)


def _simulate(
    job: str, workspace: Path, rounds: int | None, data: str | None, seed: int, component_args: dict | None = None
) -> int:
    from nvflare_gia.data import load_splits
    from nvflare_gia.flare.jobs import prepare_job, read_tb_scalars, run_simulator
    from nvflare_gia.flare.widget import METRICS_FILE

    spec = _data_spec(data, seed)
    num_classes = load_splits(spec).num_classes
    job_dir = prepare_job(
        job, workspace / "job", num_rounds=rounds, data_spec=spec, num_classes=num_classes, component_args=component_args
    )
    logger.info("simulating %s on %s (%d classes) in %s", job, spec.source, num_classes, workspace)
    run = run_simulator(job_dir, workspace / "simulator", clients=spec.site_names)
    if run.returncode != 0:
        logger.error("simulator failed (exit %d); last lines:\n%s", run.returncode, run.log_tail)
        return 1
    scalars = read_tb_scalars(run.server_run_dir)
    sys.stdout.write(_accuracy_table(scalars) + "\n")
    metrics_path = run.server_run_dir / "gia" / METRICS_FILE
    records = read_metrics_lines(metrics_path)
    if records:
        sys.stdout.write("\nGradient inversion leakage (server-side attack; last attacked round per site, and its worst):\n")
        sys.stdout.write(_leakage_table(records) + "\n")
        sys.stdout.write(f"metrics: {metrics_path}\nreconstructions (truth above, attack below): {metrics_path.parent}/<site>/round_<r>/grid.png\n")
        from nvflare_gia.report import write_run_report

        report_path = write_run_report(run.server_run_dir)
        sys.stdout.write(f"report: {report_path}\n")
    sys.stdout.write(f"finished in {run.seconds:.0f} s; server run directory: {run.server_run_dir}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``nvflare-gia``."""
    parser = argparse.ArgumentParser(prog="nvflare-gia", description="Gradient inversion audit and defenses for NVIDIA FLARE")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the main job in the FLARE simulator on embedded synthetic images (or --data)")
    demo.add_argument("--data", default=None, help="a .npz of the shared format, an image folder or a datalist; default: synthetic")
    demo.add_argument("--rounds", type=_int_at_least(1), default=2)
    demo.add_argument(
        "--attack-seconds", type=_positive_seconds, default=40.0,
        help="wall-clock budget of each attack (the demo attacks the first round, whose global model is untrained)",
    )
    demo.add_argument("--workspace", type=Path, default=Path("gia_runs/demo"))
    demo.add_argument("--seed", type=int, default=0)

    simulate = commands.add_parser("simulate", help="run any job folder (or a name under jobs/) in the simulator")
    simulate.add_argument("job")
    simulate.add_argument("--data", default=None)
    simulate.add_argument("--rounds", type=_int_at_least(1), default=None)
    simulate.add_argument("--workspace", type=Path, default=None)
    simulate.add_argument("--seed", type=int, default=0)

    commands.add_parser("poc", help="POC mode: prepare, start, submit, wait, download, stop, clean (see poc/README.md)", add_help=False)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    attack = bench_commands.add_parser("attack", help="attack strength and cost on the TMI 2023 setting")
    attack.add_argument("--quick", action="store_true")
    attack.add_argument("--data", default=None)
    attack.add_argument("--json", required=True)
    attack.add_argument("--seconds", type=_positive_seconds, default=60.0)
    attack.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    attack.add_argument(
        "--threads", type=_int_at_least(1), default=None,
        help="CPU threads for the attacks and the timed training steps (default: one, the steadiest timing on a small machine)",
    )
    attack.add_argument(
        "--parallel-restarts", type=_int_at_least(1), default=None,
        help="restarts run side by side, each on its own thread (default: one per CPU core, at most the attack's restarts; one on CUDA)",
    )
    attack.add_argument(
        "--model", default=None,
        help="your own network instead of SmallCNN and ResNet-18: a built-in name or the dotted path of a factory "
        "f(num_classes=..., in_channels=...) that Python can import (batch 1 and 4; 8 without --quick)",
    )
    defenses = bench_commands.add_parser("defenses", help="privacy-utility of every defense (TMI 2023 protocol)")
    defenses.add_argument("--quick", action="store_true", help="smaller grid, fewer rounds (same protocol)")
    defenses.add_argument("--data", default=None)
    defenses.add_argument("--json", required=True)
    defenses.add_argument("--rounds", type=_int_at_least(1), default=None)
    budget = defenses.add_mutually_exclusive_group()
    budget.add_argument("--attack-seconds", type=_positive_seconds, default=None, help="wall-clock budget of each attack (default 30 with --quick, else 60)")
    budget.add_argument(
        "--attack-iterations", type=int, default=None, metavar="N",
        help="instead of seconds, N iterations per attack restart with no time limit: the same leakage numbers on every rerun",
    )
    defenses.add_argument("--defenses", nargs="+", default=None, help="subset: gaussian laplacian shadow latent calibrated_gaussian calibrated_shadow calibrated_latent "
                          "(none always runs; calibrated_latent only when named here)")
    defenses.add_argument(
        "--grid", nargs="+", default=None, metavar="DEFENSE:PARAM=V1,V2",
        help="replace a defense's strengths, weakest first (e.g. shadow:budget=0.1,0.25 gaussian:sigma0=0.03,0.1); "
             "without --defenses only the defenses named here run",
    )
    defenses.add_argument(
        "--audit-rounds", default="last", metavar="last|all",
        help="attack the high-risk site's update of the last round (default) or of every round and average (rounds x the attack time)",
    )
    defenses.add_argument("--seed", type=int, default=0)
    defenses.add_argument(
        "--seeds", type=int, default=1, help="repeat with seeds SEED, SEED+1, ... and report means (each seed attacks another high-risk image)"
    )
    merge = bench_commands.add_parser(
        "merge", help="pool the seeds of several `bench defenses` JSONs of one protocol (run with --seed K --seeds N each) into one"
    )
    merge.add_argument("inputs", nargs="+", metavar="IN.json", help="two or more outputs of `bench defenses` (or of `bench merge`)")
    merge.add_argument("--json", required=True, help="merged output (a CSV is written beside it)")
    overhead = bench_commands.add_parser("overhead", help="seconds of each defense on 1M- and 11M-parameter updates")
    overhead.add_argument("--json", required=True)
    overhead.add_argument("--repeats", type=_int_at_least(1), default=5)
    overhead.add_argument("--data", default=None)

    report = commands.add_parser("report", help="self-contained HTML + Markdown leakage report of a run (or of a benchmark JSON with --bench)")
    report.add_argument("run_dir", nargs="?", type=Path, default=None, metavar="RUN_DIR",
                        help="server run dir, simulator workspace, its gia folder or a downloaded job folder")
    report.add_argument("--bench", type=Path, default=None, metavar="OUT.json", help="a JSON of `bench defenses` or `bench overhead` instead of RUN_DIR")
    report.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder; default RUN_DIR/gia_report, or OUT_report beside OUT.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nvflare-gia``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["poc"]:
        from nvflare_gia.flare import poc

        return int(poc.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("demo", "simulate"):
        try:
            if args.command == "demo":
                # Attack round 0 only (every `rounds`-th round from 0): within 3 minutes the demo spends its
                # attack time on the untrained global model, the benchmark's setting.
                overrides = {WIDGET_ID: {"max_seconds": args.attack_seconds, "frequency": args.rounds}}
                return _simulate(DEFAULT_DEMO_JOB, args.workspace.resolve(), args.rounds, args.data, args.seed, overrides)
            workspace = (args.workspace or Path("gia_runs") / Path(args.job).name).resolve()
            return _simulate(args.job, workspace, args.rounds, args.data, args.seed)
        except GIAError as e:
            logger.error("%s", e)
            return 2
    if args.command == "bench" and args.bench_command == "attack":
        from nvflare_gia.bench.attack_bench import run_attack_benchmark

        threads = {} if args.threads is None else {"threads": args.threads}
        run_attack_benchmark(
            quick=args.quick, data=args.data, json_path=args.json, seconds=args.seconds, device=args.device, model=args.model,
            parallel_restarts=args.parallel_restarts, **threads
        )
        return 0
    if args.command == "bench" and args.bench_command == "defenses":
        from nvflare_gia.bench.defense_bench import parse_grid, run_defense_benchmark

        try:
            run_defense_benchmark(
                quick=args.quick, data=args.data, json_path=args.json, rounds=args.rounds, attack_seconds=args.attack_seconds,
                attack_iterations=args.attack_iterations, defenses=args.defenses, seed=args.seed, seeds=args.seeds, grid=parse_grid(args.grid) if args.grid else None,
                audit_rounds=args.audit_rounds,
            )
        except GIAError as e:
            logger.error("%s", e)
            return 2
        return 0
    if args.command == "bench" and args.bench_command == "merge":
        from nvflare_gia.bench.defense_bench import merge_defense_benchmarks

        try:
            merged = merge_defense_benchmarks(args.inputs, args.json)
        except GIAError as e:
            logger.error("%s", e)
            return 2
        sys.stdout.write(f"merged seeds {merged['protocol']['seed_list']} of {len(args.inputs)} files: {args.json}\n")
        return 0
    if args.command == "bench" and args.bench_command == "overhead":
        from nvflare_gia.bench.overhead_bench import run_overhead_benchmark

        run_overhead_benchmark(json_path=args.json, repeats=args.repeats, data=args.data)
        return 0
    if args.command == "report":
        from nvflare_gia.report import write_bench_report, write_run_report

        if (args.run_dir is None) == (args.bench is None):
            logger.error("report: give either RUN_DIR or --bench OUT.json, got %s", "both" if args.bench is not None else "neither")
            return 2
        try:
            html_path = write_bench_report(args.bench, args.out) if args.bench is not None else write_run_report(args.run_dir, args.out)
        except GIAError as e:
            logger.error("%s", e)
            return 2
        sys.stdout.write(f"report: {html_path}\nsummary: {html_path.with_name('summary.md')}\n")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
