"""``skin-mlops predict``: score photos offline with the model and preprocessing the API serves.

Nothing here is a second inference path. The model is loaded exactly as the API loads it
(:func:`skin_mlops.api.model_runtime.make_source` for ``MODEL_SOURCE`` / ``--model-source``:
an export folder or ``models:/<name>@<alias>`` through MLflow, then
:func:`~skin_mlops.api.model_runtime.load_model`, which validates and warms it up); each
file goes through :func:`skin_mlops.preprocessing.preprocess_bytes` with the API's limits
(``MAX_UPLOAD_BYTES``, ``MAX_IMAGE_PIXELS``), and probabilities are the loaded model's
``softmax(logits / temperature)``. So a photo gets the same label and probabilities here
as from ``POST /predict`` on the same model.

:func:`predict_paths` returns the results as data; :func:`predict_command` prints them (a
table, or ``--json`` lines). A file that cannot be read or decoded gets one error (the
message the API would answer with 413/415/422) and the others are still scored.

ONNX Runtime only (no TensorFlow); heavy imports happen inside the functions, so
``skin-mlops --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from skin_mlops.core.errors import ConfigError, SkinMlopsError

if TYPE_CHECKING:
    from rich.console import Console

    from skin_mlops.api.model_runtime import LoadedModel
    from skin_mlops.core.config import Settings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
BATCH_SIZE = 16  # images per ONNX Runtime call
_PROGRESS_MIN_FILES = 2 * BATCH_SIZE


@dataclass(frozen=True)
class FilePrediction:
    """The result for one file: a prediction, or the one-line reason there is none.

    Attributes:
        path (Path): the file, as given or as found under a given folder.
        label (str | None): the top label (``None`` when ``error`` is set).
        confidence (float | None): its calibrated probability.
        top_k (list[tuple[str, float]]): the ``top_k`` best labels with their probabilities.
        uncertain (bool | None): ``confidence < UNCERTAINTY_THRESHOLD``, or out of
            distribution.
        in_distribution (bool | None): the out-of-distribution guard's verdict (None for
            a model without the guard).
        ood_score (float | None): the guard's distance / its threshold (above 1: out).
        model_version (str | None): the version that scored the file.
        error (str | None): why the file was not scored (the API's message for that case).
    """

    path: Path
    label: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    uncertain: bool | None = None
    in_distribution: bool | None = None
    ood_score: float | None = None
    model_version: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was scored."""
        return self.error is None

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` line: the API's field names (``top_k`` as label/probability)."""
        if self.error is not None:
            return {"path": str(self.path), "error": self.error}
        return {
            "path": str(self.path),
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
            "uncertain": self.uncertain,
            "in_distribution": self.in_distribution,
            "ood_score": self.ood_score,
            "model_version": self.model_version,
        }


@dataclass(frozen=True)
class MissingPath:
    """A path given on the command line that does not exist (reported as a failed file)."""

    path: Path


def collect_files(paths: Sequence[Path]) -> list[Path | MissingPath]:
    """Files to score, in order: each file as given; each folder walked (sorted,
    recursively) for ``.jpg``/``.jpeg``/``.png``; a missing path kept to be reported.

    Raises:
        ConfigError: nothing at all to score.
    """
    found: list[Path | MissingPath] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                )
            )
        elif path.exists():
            found.append(path)
        else:
            found.append(MissingPath(path))
    unique = list(dict.fromkeys(found))
    if not unique:
        suffixes = "/".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(
            f"no {suffixes} files under {', '.join(str(p) for p in paths) or 'the given paths'}"
        )
    return unique


def load_served_model(settings: Settings) -> LoadedModel:
    """The model ``settings.model_source`` names, loaded and validated as the API does.

    Raises:
        ConfigError: no usable model there (missing folder, refused export, registry down).
    """
    from skin_mlops.api.model_runtime import load_model, make_source

    source = make_source(settings)
    try:
        key = source.current_key()
        folder = source.materialize(key)
        return load_model(folder, key, settings)
    except SkinMlopsError as exc:
        raise ConfigError(f"cannot load a model from {source.description}: {exc}") from None


def _read_and_preprocess(path: Path, size: int, settings: Settings) -> Any:
    """``float32[S, S, 3]`` for ``path``, or the one-line error (a ``str``)."""
    from skin_mlops import preprocessing

    limit = settings.max_upload_bytes
    try:
        n_bytes = path.stat().st_size
        if n_bytes > limit:  # the API's 413 wording
            return f"file of {n_bytes:,} bytes is over the limit of {limit:,} bytes"
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    try:
        return preprocessing.preprocess_bytes(data, size, max_pixels=settings.max_image_pixels)
    except preprocessing.ImageError as exc:  # 415 / 422 / 413 in the API, same message
        return str(exc)
    except Exception:  # a decoder edge case: the API answers 422 with this line
        return "the image could not be decoded"


def score_files(
    model: LoadedModel,
    files: Sequence[Path | MissingPath],
    settings: Settings,
    *,
    top_k: int = 3,
    batch_size: int = BATCH_SIZE,
    on_done: Callable[[int], None] | None = None,
) -> Iterator[FilePrediction]:
    """Score ``files`` with ``model`` in batches of ``batch_size``, yielding in input order.

    Files are decoded on ``PREPROCESS_WORKERS`` threads; ``on_done(n)`` is called after
    each batch with the number of files it held.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    threshold = settings.uncertainty_threshold
    k = min(top_k, len(model.labels))
    with ThreadPoolExecutor(settings.preprocess_workers) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = list(
                pool.map(
                    lambda f: (
                        "no such file or folder"
                        if isinstance(f, MissingPath)
                        else _read_and_preprocess(f, model.image_size, settings)
                    ),
                    chunk,
                )
            )
            good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
            if good:
                logits, ood = model.outputs(np.stack([decoded[i] for i in good]))
                probabilities = model.probabilities(logits)
            else:
                probabilities, ood = np.empty((0, len(model.labels))), None
            rows = dict(zip(good, probabilities, strict=True))
            scores = dict(zip(good, ood, strict=True)) if ood is not None else {}
            ood_threshold = model.signature.ood.threshold if model.signature.ood else None
            for i, item in enumerate(chunk):
                path = item.path if isinstance(item, MissingPath) else item
                if i not in rows:
                    yield FilePrediction(path=path, error=str(decoded[i]))
                    continue
                row = rows[i]
                order = np.argsort(-row, kind="stable")
                confidence = float(row[order[0]])
                score = float(scores[i]) if i in scores else None
                in_distribution = model.in_distribution(score)
                yield FilePrediction(
                    path=path,
                    label=model.labels[order[0]],
                    confidence=confidence,
                    top_k=[(model.labels[j], float(row[j])) for j in order[:k]],
                    uncertain=confidence < threshold or in_distribution is False,
                    in_distribution=in_distribution,
                    ood_score=(
                        round(score / ood_threshold, 4)
                        if score is not None and ood_threshold
                        else None
                    ),
                    model_version=model.version,
                )
            if on_done is not None:
                on_done(len(chunk))


def predict_paths(
    paths: Sequence[Path | str],
    *,
    model_source: str | None = None,
    top_k: int = 3,
    settings: Settings | None = None,
) -> list[FilePrediction]:
    """Score image files and folders (walked for .jpg/.jpeg/.png) with the served model.

    Args:
        paths: files and folders, in the order results are wanted.
        model_source: an export folder or ``models:/<name>@<alias>`` (default:
            ``settings.model_source``, i.e. ``MODEL_SOURCE``).
        top_k: how many labels to rank per file (capped at the label count).
        settings: default :func:`~skin_mlops.core.config.get_settings`.

    Returns:
        One :class:`FilePrediction` per file, in order; failed files carry ``error``.

    Raises:
        ConfigError: no files to score, or no usable model at the source.
    """
    settings = _with_source(settings, model_source)
    files = collect_files([Path(p) for p in paths])
    model = load_served_model(settings)
    return list(score_files(model, files, settings, top_k=top_k))


def _with_source(settings: Settings | None, model_source: str | None) -> Settings:
    from skin_mlops.core.config import get_settings

    settings = settings or get_settings()
    if model_source is not None:
        settings = settings.model_copy(update={"model_source": model_source})
    return settings


def _print_table(results: list[FilePrediction], console: Console, top_k: int) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("file", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column(f"top-{top_k}")
    table.add_column("uncertain")
    table.add_column("in distribution")
    for result in results:
        if result.ok:
            table.add_row(
                str(result.path),
                result.label,
                f"{result.confidence:.3f}",
                ", ".join(f"{label} {p:.3f}" for label, p in result.top_k),
                "[yellow]yes[/]" if result.uncertain else "",
                {True: "yes", False: "[red]no[/]", None: "-"}[result.in_distribution],
            )
    console.print(table)


def predict_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Photos (.jpg/.jpeg/.png) or folders to walk for them.",
            metavar="PATH...",
            show_default=False,
        ),
    ],
    model_source: Annotated[
        str | None,
        typer.Option(
            help="Export folder (runs/skin5-current) or models:/<name>@<alias> "
            "(default: MODEL_SOURCE)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Labels to rank per photo.")] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per file instead of a table.")
    ] = False,
) -> None:
    """Score photos offline with the model and preprocessing the API serves.

    A file that cannot be read or decoded gets one error line and the others are still
    scored; the exit code is 1 when any file failed, 2 when nothing could be scored.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    settings = _with_source(None, model_source)
    files = collect_files(paths)
    model = load_served_model(settings)
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 1000  # piped: one line per file, whatever the path lengths
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    results: list[FilePrediction] = []
    with Progress(
        "[bold]scoring",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json or len(files) < _PROGRESS_MIN_FILES or not err.is_terminal,
    ) as progress:
        task = progress.add_task("scoring", total=len(files))
        for result in score_files(
            model,
            files,
            settings,
            top_k=top_k,
            on_done=lambda n: progress.advance(task, n),
        ):
            results.append(result)
            if as_json:  # streamed: one line per file as soon as its batch is done
                print(json.dumps(result.as_json()), flush=True)
    failed = [r for r in results if not r.ok]
    if not as_json:
        if len(failed) < len(results):
            _print_table(results, out, min(top_k, len(model.labels)))
        for result in failed:
            err.print(f"[bold red]error:[/] {result.path}: {result.error}")
        err.print(
            f"model {model.version}: {len(results) - len(failed)} of {len(results)} files "
            f"scored" + (f", [red]{len(failed)} failed[/]" if failed else "")
        )
    if failed:
        raise typer.Exit(code=1)
