"""`ilora-data`: import LLaRA's splits, build splits from raw logs, check a dataset directory.

Errors print `error: <message>` to stderr and exit 2; an existing non-empty output is never overwritten
without `--force`, and with it the new output is written beside the old one and swapped in only after success.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ilora.cli.common import check_output, staged_output
from ilora.errors import IloraError


def _staged(path: Path, force: bool, inputs: list[str | None]):
    """The output written into a temporary sibling and swapped in only after success (see `staged_output`)."""
    return staged_output(path, force, name=str(path), hint="pass --force to overwrite it",
                         inputs=[i for i in inputs if i is not None])


def _import(args: argparse.Namespace) -> None:
    from ilora.data.llara_import import import_one

    sources = [str(Path(args.src) / name) for name in args.datasets]
    for name in args.datasets:  # every output checked before the first one is written
        check_output(Path(args.dst) / name, args.force, name=str(Path(args.dst) / name),
                     hint="pass --force to overwrite it", inputs=sources)
    for name in args.datasets:
        with _staged(Path(args.dst) / name, args.force, sources) as tmp:
            rows = import_one(args.src, args.dst, name, out=tmp)
        print(f"{Path(args.dst) / name}: {rows}")


def _build(args: argparse.Namespace) -> None:
    from ilora.data.build import build_dataset
    from ilora.data.logs import Columns
    from ilora.data.prompts import prompt_file

    columns = Columns.from_yaml(args.columns) if args.columns else Columns()
    columns = columns.override(user=args.user_col, item=args.item_col, timestamp=args.time_col,
                               rating=args.rating_col, item_id=args.item_id_col, title=args.title_col)
    with _staged(Path(args.out), args.force, [args.interactions, args.items, args.columns]) as tmp:
        result = build_dataset(args.interactions, args.items, tmp, fmt=args.format, min_rating=args.min_rating,
                               seed=args.seed, name=args.name or Path(args.out).name, domain=args.domain,
                               columns=columns, dedupe=args.dedupe, min_user=args.min_user_interactions,
                               min_item=args.min_item_interactions)
    rows = {k: result.pop(k) for k in ("train", "val", "test")}
    for rule, count in result.items():
        print(f"  {rule}: {count}")
    print(f"{args.out}: {rows}")
    try:
        prompt_file(args.domain)
    except IloraError:
        print(f"note: no conf/prompts/{args.domain}.yaml yet: write one, or train with data.prompts=<file>")


def _build_windows(args: argparse.Namespace) -> None:
    from ilora.data.windows import build_window_dataset

    with _staged(Path(args.out), args.force, [args.interactions, args.items, args.user_split, args.train]) as tmp:
        rows = build_window_dataset(args.interactions, args.items, args.user_split, args.train, tmp,
                                    min_history=args.min_history, val_per_user=args.val_per_user or None,
                                    test_per_user=args.test_per_user or None, seed=args.seed,
                                    name=Path(args.out).name)
    print(f"{args.out}: {rows}")


def _check(args: argparse.Namespace) -> None:
    from ilora.data.datasets import load_dataset

    data = load_dataset(args.dir)
    rows = {k: len(v) for k, v in data.splits.items()}
    print(f"{args.dir}: ok ({data.name}, {data.domain}, {data.num_items} items, {rows})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilora-data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("import-llara", help="convert LLaRA's pickled splits into data/<name>/ parquet")
    imp.add_argument("src", help="folder with movielens/ lastfm/ steam/ (e.g. /work/shared/data/llara)")
    imp.add_argument("dst", help="output folder (e.g. data); each dataset goes to DST/<name>")
    imp.add_argument("--datasets", nargs="+", default=["movielens", "lastfm", "steam"],
                     choices=["movielens", "lastfm", "steam"])
    imp.add_argument("--force", action="store_true", help="overwrite existing DST/<name> folders")
    imp.set_defaults(func=_import)

    bld = sub.add_parser("build", help="build splits from raw interactions with LLaRA's recipe",
                         description="Rules for logs other than ML-100K (duplicates, untitled items, id maps): "
                                     "data/README.md and ilora.data.logs.")
    bld.add_argument("--interactions", required=True,
                     help="ml100k: u.data; else a csv/tsv/parquet/jsonl log with user, item, timestamp[, rating]")
    bld.add_argument("--items", default=None,
                     help="ml100k: u.item; else a catalogue with item id and title (omit: titles in --interactions)")
    bld.add_argument("--out", required=True, help="output dataset folder")
    bld.add_argument("--format", choices=["auto", "ml100k", "csv", "tsv", "parquet", "jsonl"], default="auto",
                     help="auto: by extension (*.data + *.item: ml100k)")
    bld.add_argument("--columns", default=None, help="YAML mapping user/item/timestamp/rating/item_id/title to "
                                                     "the files' column names")
    for flag, key in (("--user-col", "user"), ("--item-col", "item"), ("--time-col", "timestamp"),
                      ("--rating-col", "rating"), ("--item-id-col", "item_id (catalogue; default: --item-col)"),
                      ("--title-col", "title")):
        bld.add_argument(flag, default=None, help=f"column holding {key} (overrides --columns)")
    bld.add_argument("--min-rating", type=float, default=None,
                     help="keep rating >= this; default: LLaRA's rating >= 3 for ML-100K, no filter for any other log; "
                          "-1 keeps all")
    bld.add_argument("--dedupe", choices=["exact", "user-item", "none"], default="exact",
                     help="exact: drop repeats of (user, item, timestamp); user-item: first event per pair")
    bld.add_argument("--min-user-interactions", type=int, default=0, help="k-core: drop users with fewer events")
    bld.add_argument("--min-item-interactions", type=int, default=0, help="k-core: drop items with fewer events")
    bld.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 user split")
    bld.add_argument("--name", default=None, help="dataset name in meta.json (default: folder name)")
    bld.add_argument("--domain", default="movie", help="prompt domain: conf/prompts/<domain>.yaml")
    bld.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    bld.set_defaults(func=_build)

    win = sub.add_parser("build-windows", help="the extended MovieLens protocol: LLaRA's train split, every "
                                               "next-item window of the held-out users (a seeded subset)")
    win.add_argument("--interactions", required=True, help="ML-100K u.data")
    win.add_argument("--items", required=True, help="ML-100K u.item")
    win.add_argument("--user-split", required=True, help="LLaRA's user_split.json")
    win.add_argument("--train", required=True, help="dataset folder whose train.parquet is kept (data/movielens)")
    win.add_argument("--out", required=True, help="output dataset folder")
    win.add_argument("--min-history", type=int, default=3)
    win.add_argument("--val-per-user", type=int, default=6, help="windows kept per val user (0: all)")
    win.add_argument("--test-per-user", type=int, default=24, help="windows kept per test user (0: all)")
    win.add_argument("--seed", type=int, default=0)
    win.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    win.set_defaults(func=_build_windows)

    chk = sub.add_parser("check", help="load and validate a dataset folder (or a known name)")
    chk.add_argument("dir")
    chk.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 on a user-facing error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except IloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
