"""`ilora-report DIR [DIR ...]`: aggregate training runs (single runs or Hydra multiruns, searched
recursively) into OUT_DIR/report.md and OUT_DIR/hr1_vs_experts.png, and print the table.

Exit status 2 with `error: ...` for bad input (e.g. no run directory found); failed or unfinished runs are
listed in the report, never an error.
"""

from __future__ import annotations

import argparse
import sys

from ilora.errors import IloraError
from ilora.report import DEFAULT_BASELINE, DEFAULT_METRIC, build_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilora-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or folders holding them")
    parser.add_argument("--out", default=None, metavar="OUT_DIR", help="where to write (default: the first DIR)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"main metric for the confidence interval and the plot (default: {DEFAULT_METRIC})")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="configuration the others are compared with, example by example: config.key=value[,...] "
                             f"or a label (LoRA, iLoRA, 'frozen LLM'); 'none' turns it off (default: {DEFAULT_BASELINE})")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        baseline = None if args.baseline.lower() == "none" else args.baseline
        report = build_report(args.dirs, out_dir=args.out, metric=args.metric, baseline=baseline)
    except IloraError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(report.table)
    for run in report.problems:
        print(f"{run.status}: {run.path}" + (f": {run.error}" if run.error else ""))
    if report.curves_path:
        print(f"learning curves: {report.curves_path}")
    if report.paired:
        print(f"paired differences vs {args.baseline}: {report.paired_path}")
    print(f"wrote {report.markdown_path} and {report.plot_path}")
