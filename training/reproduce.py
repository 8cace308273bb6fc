"""``lookaside-train reproduce TABLE``: train and evaluate every row of a paper's table that
Lookaside can train, and print our number beside the paper's.

Each row runs its recipe (:data:`training.recipes.ROW_RECIPES`) through :func:`training.pipeline.
train`, the function ``train`` and ``crossval`` use; an ESC-50 row is the mean over its test folds
(1-5, as the papers report). Rows Lookaside cannot train are listed as ``skipped: <why>``; a row
whose dataset directory is absent as ``missing data: <path>``, and the others still run. The table
is printed and written to ``<out>/<table>.json`` and ``<out>/<table>.md``; runs go to
``<out>/runs/``. The exit status is 1 when a row failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookaside.checkpoint.atomic import write_file_atomic
from lookaside.errors import ConfigError
from training.cli_common import format_table, say
from training.paper_tables import DATASET_LABELS, TABLES, PaperRow, PaperTable, get_table

if TYPE_CHECKING:
    from training.reports import TrainReport

DATA_SUBDIRS = {
    "esc50": "ESC-50-master",
    "speech_commands": "speech_commands_v0.02",
    "epic_sounds": "EPIC-SOUNDS",
    "ave": "AVE",
}
"""Folder of each dataset under ``--data-root`` (the names the public archives unpack to; the
EPIC-SOUNDS folder holds the annotation CSVs and the HDF5 audio)."""
PLANNED = "planned"
"""Status of a row that can run, before it is trained (a dry run stops there)."""
OVERRIDES = ("epochs", "backbone", "device", "batch_size", "frames", "precision", "workers")
"""Options passed on to every row (a smoke run: ``--epochs 1 --backbone random:test_vit``)."""


@dataclass
class Result:
    """One (row, dataset) of a reproduction."""

    row: str
    key: str
    dataset: str
    status: str
    """ok, failed: ..., skipped: ..., missing data: ..."""
    recipe: str | None = None
    command: str | None = None
    params_ours: str | None = None
    params_paper: str = ""
    paper: float | None = None
    ours: float | None = None
    delta: float | None = None
    paper_map: float | None = None
    ours_map: float | None = None
    folds: list[float] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``reproduce``."""
    p.add_argument("table", choices=list(TABLES), help="the paper table to reproduce")
    p.add_argument(
        "--data",
        action="append",
        metavar="DATASET=PATH",
        help=f"a dataset's directory (repeatable); DATASET is one of {', '.join(DATA_SUBDIRS)}",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        metavar="DIR",
        help="where datasets not given with --data are looked for: "
        + ", ".join(f"{d} in {s}/" for d, s in DATA_SUBDIRS.items())
        + " (default: data)",
    )
    p.add_argument(
        "--rows", help="comma-separated row keys to run, as the reports show them (default: all)"
    )
    p.add_argument("--datasets", help="comma-separated datasets to run (default: every one)")
    p.add_argument("--folds", default="1,2,3,4,5", help="ESC-50 test folds averaged")
    p.add_argument("--dry-run", action="store_true", help="print the commands, train nothing")
    p.add_argument(
        "--out", type=Path, default=Path("reproduce"), help="reports and runs (default: reproduce)"
    )
    g = p.add_argument_group("overrides for every row (e.g. a smoke run)")
    g.add_argument("--epochs", type=int, help="passes over the training set")
    g.add_argument("--backbone", help="backbone source instead of the recipe's")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="clips per step")
    g.add_argument("--frames", type=int, help="frames per window")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision")
    g.add_argument("--workers", type=int, help="DataLoader worker processes")


def _data_dirs(ns: argparse.Namespace) -> dict[str, Path]:
    dirs = {d: ns.data_root / sub for d, sub in DATA_SUBDIRS.items()}
    for item in ns.data or []:
        name, sep, path = item.partition("=")
        if not sep or name not in DATA_SUBDIRS:
            raise ConfigError(
                f"--data {item!r}: expected DATASET=PATH with DATASET one of "
                f"{', '.join(DATA_SUBDIRS)}"
            )
        dirs[name] = Path(path).expanduser()
    return dirs


def _selected(table: PaperTable, ns: argparse.Namespace) -> list[tuple[PaperRow, str]]:
    """(row, dataset) pairs to report, in table order."""
    keys = {r.key for r in table.rows}
    wanted = set(ns.rows.split(",")) if ns.rows else keys
    unknown = sorted(wanted - keys)
    if unknown:
        raise ConfigError(
            f"{table.name} has no rows {unknown}; its rows: {', '.join(sorted(keys))}"
        )
    datasets = set(ns.datasets.split(",")) if ns.datasets else set(DATA_SUBDIRS)
    return [
        (row, d)
        for row in table.rows
        if row.key in wanted
        for d in table.recipe_prefix
        if d in row.metrics and d in datasets
    ]


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(ns, k) for k in OVERRIDES if getattr(ns, k, None) is not None}


def command_line(recipe: str, dataset: str, data: Path, out: Path, ns: argparse.Namespace) -> str:
    """The ``lookaside-train`` command that trains one row (``crossval`` for ESC-50's folds)."""
    esc = dataset == "esc50"
    argv = ["lookaside-train", "crossval" if esc else "train", "--recipe", recipe]
    argv += ["--data-dir", str(data), "--out", str(out / "runs"), "--name", recipe]
    if esc and ns.folds != "1,2,3,4,5":
        argv += ["--folds", ns.folds]
    for key, value in _overrides(ns).items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(argv)


def _run(recipe: str, dataset: str, data: Path, ns: argparse.Namespace, res: Result) -> None:
    """Train (per fold for ESC-50) and fill ``res`` with our score."""
    from training.args import build_args
    from training.crossval import plan, run_folds
    from training.pipeline import train
    from training.recipes import RECIPES

    layers = [
        {**RECIPES[recipe].settings, "recipe": recipe},
        {"data_dir": data, "out": ns.out / "runs", "name": recipe, **_overrides(ns)},
    ]
    args = build_args(layers)
    # ESC-50: crossval's checks (every fold a different test set) and runs
    reports = run_folds(args, plan(args, ns.folds)[0]) if dataset == "esc50" else [train(args)]
    maps = []
    for report in reports:
        res.folds.append(100 * report.metrics["accuracy"])
        res.runs.append(str(report.run_dir))
        found = final_map(report)
        maps += [] if found is None else [found]
    res.ours = statistics.mean(res.folds)
    res.ours_map = statistics.mean(maps) if maps and res.paper_map is not None else None
    res.delta = None if res.paper is None else res.ours - res.paper
    res.status = "ok"


def final_map(report: TrainReport) -> float | None:
    """The run's mAP on the split its accuracy is (metrics.json's ``eval_split``: test when the
    run had one, else val); None where the dataset reports no mAP."""
    split = json.loads((report.run_dir / "metrics.json").read_text())["eval_split"]
    return report.metrics.get(f"{split}_map")


def _plan(
    table: PaperTable, row: PaperRow, dataset: str, dirs: dict[str, Path], ns: argparse.Namespace
) -> Result:
    """One (row, dataset) before training: its sizes and command, status ``planned`` (or why it
    cannot run: skipped, missing data)."""
    from training.param_table import count_row
    from training.recipes import ROW_RECIPES

    res = Result(row.row, row.key, dataset, "", params_paper=row.printed)
    res.paper, res.paper_map = row.metrics.get(dataset), row.metrics2.get(dataset)
    if row.skip:
        res.status = f"skipped: {row.skip}"
        return res
    count = count_row(table, row)
    if count is not None:
        res.params_ours = f"{count.params / 1e6:.3f}M"
    res.recipe = ROW_RECIPES[(table.name, row.key, dataset)]
    res.command = command_line(res.recipe, dataset, dirs[dataset], ns.out, ns)
    exists = dirs[dataset].exists()
    res.status = PLANNED if exists else f"missing data: {dirs[dataset]}"
    return res


def _train(res: Result, dirs: dict[str, Path], ns: argparse.Namespace) -> Result:
    """Train a planned row and fill in its scores (a failure is its status, not an exception)."""
    if res.status != PLANNED or res.recipe is None:
        return res
    try:
        _run(res.recipe, res.dataset, dirs[res.dataset], ns, res)
    except Exception as exc:  # noqa: BLE001 - one failed row must not stop the others
        res.status = f"failed: {type(exc).__name__}: {exc}"
    return res


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table_lines(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    header = ["row", "dataset", "params ours / paper", "ours / paper", "delta", "status"]
    rows = []
    for r in results:
        metric = f"{_fmt(r.ours)} / {_fmt(r.paper)}"
        if r.paper_map is not None:
            metric += f" (mAP {_fmt(r.ours_map, 3)} / {_fmt(r.paper_map, 3)})"
        params = f"{r.params_ours or '-'} / {r.params_paper}"
        label = DATASET_LABELS[r.dataset]
        rows.append([f"{r.row} [{r.key}]", label, params, metric, _fmt(r.delta), r.status])
    return header, rows


def write_reports(table: PaperTable, results: list[Result], out: Path) -> tuple[Path, Path]:
    """``<out>/<table>.json`` (every field) and ``<out>/<table>.md`` (the printed table)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "table": table.name,
        "paper": table.paper,
        "metric": table.metric,
        "rows": [asdict(r) for r in results],
    }
    json_path, md_path = out / f"{table.name}.json", out / f"{table.name}.md"
    # atomic: a rerun reuses the finished rows of this file, so a crash must not tear it
    write_file_atomic(json_path, (json.dumps(data, indent=2) + "\n").encode())
    header, rows = _table_lines(results)
    md = [f"# {table.paper}", "", f"Metric: {table.metric}.", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    write_file_atomic(md_path, ("\n".join(md) + "\n").encode())
    return json_path, md_path


def finished_rows(path: Path) -> dict[tuple[str, str, str], Result]:
    """Rows an earlier run of the same table finished (status ok), by (row, dataset, command):
    a rerun after a crash or Ctrl-C trains only what is left. A changed command (other options,
    data or overrides) trains again."""
    try:
        data = json.loads(path.read_text())
        rows = [Result(**r) for r in data["rows"]]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {(r.key, r.dataset, r.command or ""): r for r in rows if r.status == "ok"}


def cmd_reproduce(ns: argparse.Namespace) -> int:
    """Run (or, with ``--dry-run``, list) every selected row; print and write the table (after
    every row, so finished rows survive a crash and are reused by the next run)."""
    table = get_table(ns.table)
    dirs = _data_dirs(ns)
    done = {} if ns.dry_run else finished_rows(ns.out / f"{table.name}.json")
    results: list[Result] = []
    for row, dataset in _selected(table, ns):
        planned = _plan(table, row, dataset, dirs, ns)
        earlier = done.get((row.key, dataset, planned.command or ""))
        if earlier is not None:
            say(f"{row.key} ({DATASET_LABELS[dataset]}): finished earlier, {earlier.ours:.2f}")
            results.append(earlier)
            continue
        res = planned if ns.dry_run else _train(planned, dirs, ns)
        if ns.dry_run:
            say(res.command or f"# {row.key} ({DATASET_LABELS[dataset]}) {res.status}")
            if res.command and res.status.startswith("missing"):
                say(f"# {res.status}")
        else:
            write_reports(table, [*results, res], ns.out)
        results.append(res)
    if ns.dry_run:
        return 0
    header, rows = _table_lines(results)
    say(f"{table.paper}\nmetric: {table.metric}\n")
    say(format_table(rows, header, wrap={0: 40, 5: 40}))
    json_path, md_path = write_reports(table, results, ns.out)
    say(f"\nwrote {json_path} and {md_path}")
    return 1 if any(r.status.startswith("failed") for r in results) else 0
