"""What an ingestion reports: the summary as data (:class:`IngestionSummary`, returned by
:func:`~skin_mlops.ingestion.run.run_ingestion`, JSON-friendly through ``to_dict()`` for
Airflow's XCom) and as the table ``skin-mlops ingest`` prints (:func:`print_summary`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

ProgressCallback = Callable[[str, int, int], None]
"""``callback(phase, done, total)``, called from the ingesting thread."""


@dataclass
class LabelCounts:
    """What happened to the files of one split/label (files, except the row counts).

    ``new``/``unchanged``/``not_an_image``/``corrupt``/``duplicates``/``errors`` count files
    on disk (each file is in exactly one of them); ``conflicts`` and ``leakage`` count the
    distinct images of this split/label involved in one; ``missing`` counts rows whose
    files vanished since the previous run.
    """

    new: int = 0
    unchanged: int = 0
    not_an_image: int = 0
    corrupt: int = 0
    duplicates: int = 0
    conflicts: int = 0
    leakage: int = 0
    missing: int = 0
    errors: int = 0

    def add(self, other: LabelCounts) -> None:
        """Add ``other`` into this one (for totals)."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Place:
    """Where one copy of an image lives."""

    split: str
    label: str
    source_path: str


@dataclass
class Finding:
    """Bytes filed in several places: a label conflict or a train/val leak."""

    sha256: str
    places: list[Place]


@dataclass
class Problem:
    """A file (or object) that could not be ingested as it is, and why."""

    path: str
    kind: Literal["corrupt", "unreadable", "symlink_outside_root", "object_lost", "foreign_object"]
    message: str


@dataclass
class IngestionSummary:
    """The outcome of one ingestion, as data (``to_dict()`` is JSON-serialisable)."""

    dataset: str
    splits: list[str]
    dry_run: bool
    store: str
    bucket: str
    counts: dict[str, dict[str, LabelCounts]] = field(default_factory=dict)
    conflicts: list[Finding] = field(default_factory=list)
    leakage: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unknown_label_folders: dict[str, list[str]] = field(default_factory=dict)
    missing_label_folders: dict[str, list[str]] = field(default_factory=dict)
    uploaded: int = 0
    orphans_adopted: int = 0
    orphans_deleted: int = 0
    rows_missing_total: int = 0
    duration_s: float = 0.0

    def label_counts(self, split: str, label: str) -> LabelCounts:
        """The counter of one split/label (created on first use)."""
        return self.counts.setdefault(split, {}).setdefault(label, LabelCounts())

    def totals(self) -> LabelCounts:
        """All split/label counters added up."""
        total = LabelCounts()
        for labels in self.counts.values():
            for counts in labels.values():
                total.add(counts)
        return total

    @property
    def failed(self) -> bool:
        """Corrupt or unreadable files, or unresolved label conflicts (exit code 1)."""
        totals = self.totals()
        return bool(totals.corrupt or totals.errors or totals.conflicts)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts/lists/str/int (for XCom, JSON, logs)."""
        data = asdict(self)
        data["totals"] = asdict(self.totals())
        data["failed"] = self.failed
        return data


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def print_summary(summary: IngestionSummary, console: Console) -> None:
    """A per-split, per-label table, then conflicts, leakage and problems."""
    totals = summary.totals()
    headers = {
        "new": "new",
        "unchanged": "unchanged",
        "not_an_image": "not image",
        "corrupt": "corrupt",
        "duplicates": "dupes",
        "conflicts": "conflicts",
        "leakage": "leakage",
        "missing": "missing",
        "errors": "errors",
    }
    # Problem columns only appear when there is a problem (the table fits 80 columns on a
    # clean run); a line below says which checks found nothing.
    always = ("new", "unchanged")
    columns = [n for n in headers if n in always or getattr(totals, n)]
    clean = [headers[n] for n in headers if n not in always and not getattr(totals, n)]
    title = f"Ingestion of {summary.dataset}" + (" (dry run)" if summary.dry_run else "")
    table = Table(
        title=title, show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    table.add_column("split", footer="total", no_wrap=True)
    table.add_column("label", no_wrap=True)
    for name in columns:
        table.add_column(headers[name], justify="right", footer=str(getattr(totals, name)))
    for split, labels in summary.counts.items():
        for label, counts in labels.items():
            cells = []
            for name in columns:
                value = getattr(counts, name)
                bad = name in ("corrupt", "conflicts", "errors") and value
                warn = name in ("leakage", "missing") and value
                cells.append(
                    f"[red]{value}[/]" if bad else f"[yellow]{value}[/]" if warn else str(value)
                )
            table.add_row(split, label, *cells)
    console.print(table)
    verb = "would upload" if summary.dry_run else "uploaded"
    uploads = totals.new if summary.dry_run else summary.uploaded
    console.print(
        f"{verb} {uploads} object(s) to {summary.bucket} ({summary.store}); "
        f"adopted {summary.orphans_adopted} and deleted {summary.orphans_deleted} orphan "
        f"object(s); {summary.rows_missing_total} row(s) marked missing; "
        f"{summary.duration_s:.2f}s"
    )
    if clean:
        console.print(f"[green]none found:[/] {', '.join(clean)}", highlight=False)
    for split, names in summary.unknown_label_folders.items():
        if names:
            console.print(
                f"[yellow]{split}: folders that are not labels, skipped:[/] " + ", ".join(names)
            )
    for split, names in summary.missing_label_folders.items():
        if names:
            console.print(f"[yellow]{split}: no folder for labels:[/] " + ", ".join(names))
    shown = 20
    for title_text, findings, style in (
        (
            "label conflicts (same image under several labels; not used for training)",
            summary.conflicts,
            "red",
        ),
        ("train/val leakage (same image in several splits)", summary.leakage, "yellow"),
    ):
        if findings:
            console.print(f"[{style}]{len(findings)} {title_text}:[/]")
            for finding in findings[:shown]:
                where = "; ".join(
                    f"{p.split}/{p.label}: {p.source_path or '(object only)'}"
                    for p in finding.places
                )
                console.print(f"  {finding.sha256[:12]}  {where}", highlight=False)
            if len(findings) > shown:
                console.print(f"  ... and {len(findings) - shown} more (see to_dict())")
    if summary.problems:
        console.print(f"[red]{len(summary.problems)} problem(s):[/]")
        for problem in summary.problems[:shown]:
            console.print(f"  {problem.kind}: {problem.path}: {problem.message}", highlight=False)
        if len(summary.problems) > shown:
            console.print(f"  ... and {len(summary.problems) - shown} more")
