"""The model registry and the promotion gate: who is ``@champion``, and who may take it.

:func:`register_version` registers a logged model as a new version of
  ``skin-classifier`` (no alias); :func:`promote_if_better` is the promotion gate: under
  :func:`champion_lock` it reads the champion (:func:`current_champion`: a registry error
  is one :class:`~skin_mlops.core.errors.ServiceUnavailableError`, never "no champion"),
  re-scores it on the candidate's own val photos (a :data:`ChampionScorer`, see
  :mod:`skin_mlops.modeling.promotion`), moves ``@champion`` only for an improvement of at
  least ``min_delta`` (``PROMOTION_MIN_DELTA``, default 0.01) and publishes the export
  while still holding the lock; :func:`log_decision` records the decision, both scores and
  the margin on the candidate's run.

**Concurrency.** With a local SQLite store the lock is an ``fcntl.flock`` on
``<db>.champion.lock``: two trainings finishing at once are decided one after the other,
and the second is compared with the first. MLflow offers no compare-and-set on aliases,
so with a tracking server (the Docker stack) nothing here can serialise gates on
different machines: the training DAG runs one run at a time (``max_active_runs=1``), and
a ``skin-mlops train`` started by hand against the same server while the DAG promotes is
not guarded.

MLflow is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from skin_mlops.core.errors import ServiceUnavailableError, SkinMlopsError
from skin_mlops.modeling.tracking import sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION_ALIAS = "champion"
SELECTION_METRIC = "val_macro_f1"


#: A candidate takes ``@champion`` only when it beats the champion by this much (macro-F1).
DEFAULT_MIN_DELTA = 0.01
#: How long a gate waits for another gate on the same local store (it re-scores and publishes).
LOCK_WAIT_S = 900.0
# Macro-F1 values are ratios of small integers: a margin "equal" to min_delta may land a
# few ulps below it after the subtraction.
_SCORE_TOLERANCE = 1e-9

#: ``(model_name, version) -> macro-F1`` of a registered version on *this run's* val photos.
ChampionScorer = Callable[[str, str], float]


class ChampionNotComparable(SkinMlopsError):
    """The champion's registered model cannot be run by this code (the API's loader refuses
    it: another preprocessing, a broken ONNX file), so it cannot be re-scored."""


@dataclass(frozen=True)
class Champion:
    """The version ``@champion`` points at.

    ``stored_score`` is the val macro-F1 it was registered with, on *its own* val set: shown
    for information, never compared (the gate re-scores the champion on the candidate's).
    """

    version: str
    run_id: str | None
    stored_score: float | None


@dataclass(frozen=True)
class ChampionDecision:
    """What the promotion gate decided, with both scores on the same photos.

    ``previous_version`` is the champion the candidate was compared with (or the candidate
    itself when a retried step finds it already champion); ``previous_score`` is that
    champion's macro-F1 re-scored on the candidate's val photos (``None`` when there was
    nothing to compare). ``published_dir`` is set when the gate published the export.
    """

    model_name: str
    version: str
    promoted: bool
    score: float
    previous_version: str | None
    previous_score: float | None
    min_delta: float = 0.0
    reason: str = ""
    deferred_to_gate: bool = False
    published_dir: Path | None = None

    @classmethod
    def deferred(cls, model_name: str, version: str, score: float) -> ChampionDecision:
        """Registered only: the promotion step decides later."""
        return cls(
            model_name,
            version,
            False,
            score,
            None,
            None,
            reason="the promotion step decides",
            deferred_to_gate=True,
        )

    @property
    def outcome(self) -> str:
        """``promoted``, ``kept`` (the champion stays) or ``deferred`` (decided later)."""
        if self.deferred_to_gate:
            return "deferred"
        return "promoted" if self.promoted else "kept"

    @property
    def margin(self) -> float | None:
        """Candidate minus champion, both on the same photos (``None``: nothing compared)."""
        if self.previous_score is None:
            return None
        return self.score - self.previous_score

    @property
    def summary(self) -> str:
        """One line for logs and the CLI."""
        head = f"{self.model_name} v{self.version}"
        if self.deferred_to_gate:
            return (
                f"{head} registered ({SELECTION_METRIC} {self.score:.4f}); the promotion step "
                f"decides @{CHAMPION_ALIAS}"
            )
        if self.previous_version == self.version:
            return f"{head} already holds @{CHAMPION_ALIAS} ({SELECTION_METRIC} {self.score:.4f})"
        if self.previous_version is None:
            return f"{head} is the first champion ({SELECTION_METRIC} {self.score:.4f})"
        verb = "takes" if self.promoted else "does not take"
        if self.previous_score is None:
            return f"{head} {verb} @{CHAMPION_ALIAS}: {self.reason}"
        return (
            f"{head} {verb} @{CHAMPION_ALIAS}: {SELECTION_METRIC} {self.score:.4f} vs "
            f"v{self.previous_version} {self.previous_score:.4f} on the same val photos "
            f"(margin {self.margin:+.4f}, needed {self.min_delta:.4f})"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _registry_error(
    action: str, client: MlflowClient, exc: BaseException
) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"MLflow registry at {client.tracking_uri} failed while {action}: {_first_line(exc)}"
    )


def current_champion(client: MlflowClient, model_name: str) -> Champion | None:
    """The version ``@champion`` points at; ``None`` only when there is none.

    "None" means the registry answered that the model is not registered, or that it has
    no ``champion`` alias. Any other failure (store unreachable, locked, refusing) is
    *not* "no champion": reading it as one would crown the candidate blindly.

    Raises:
        ServiceUnavailableError: the registry could not be read (one line).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise _registry_error(f"reading {model_name}@{CHAMPION_ALIAS}", client, exc) from None
    except OSError as exc:  # a connection error MLflow did not wrap
        raise _registry_error(f"reading {model_name}@{CHAMPION_ALIAS}", client, exc) from None
    version = (registered.aliases or {}).get(CHAMPION_ALIAS)
    if version is None:
        return None
    try:
        model_version = client.get_model_version(model_name, str(version))
    except (MlflowException, OSError) as exc:
        raise _registry_error(
            f"reading {model_name} v{version} (@{CHAMPION_ALIAS})", client, exc
        ) from None
    stored = model_version.tags.get(SELECTION_METRIC)
    return Champion(
        version=str(model_version.version),
        run_id=model_version.run_id or model_version.tags.get("run_id"),
        stored_score=float(stored) if stored is not None else None,
    )


def register_version(
    model_uri: str,
    model_name: str,
    score: float,
    *,
    run_id: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``model_name`` (no alias); its version.

    The version carries its validation macro-F1 (full precision) and the training run id
    as tags.
    """
    import mlflow

    version_tags = {SELECTION_METRIC: repr(float(score)), "run_id": run_id, **(tags or {})}
    return str(mlflow.register_model(model_uri, model_name, tags=version_tags).version)


def version_score(client: MlflowClient, model_name: str, version: str) -> float:
    """The validation macro-F1 a registered version was tagged with (on its own val set)."""
    model_version = client.get_model_version(model_name, version)
    return float(model_version.tags.get(SELECTION_METRIC, "-inf"))


def champion_lock_path(tracking_uri: str) -> Path | None:
    """The lock file of a local (SQLite) store: ``<db>.champion.lock`` beside it.

    ``None`` for a tracking server or a remote database: MLflow has no compare-and-set on
    aliases, and a lock file on this machine would not stop a gate on another one. There
    the orchestration runs one training DAG run at a time (``max_active_runs=1``).
    """
    sqlite_file = sqlite_path(tracking_uri)
    if sqlite_file is None:
        return None
    return sqlite_file.with_name(sqlite_file.name + ".champion.lock")


@contextmanager
def champion_lock(tracking_uri: str, wait_s: float = LOCK_WAIT_S) -> Iterator[Path | None]:
    """Hold the store's champion lock (``fcntl.flock``, released even on SIGKILL).

    Serialises read-champion / re-score / compare / set-alias / publish between gates on
    one local store, processes and threads alike (each holder opens the file itself). A
    no-op for a server store (see :func:`champion_lock_path`). Yields the lock file.

    Raises:
        ServiceUnavailableError: another gate held it for more than ``wait_s``.
    """
    import fcntl

    lock_path = champion_lock_path(tracking_uri)
    if lock_path is None:
        yield None
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(lock_path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailableError(
                        f"another promotion holds {lock_path} for over {wait_s:.0f} s; retry"
                    ) from None
                time.sleep(0.1)
        try:
            yield lock_path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _compare(
    score: float, champion: Champion, rescore: ChampionScorer, model_name: str, min_delta: float
) -> tuple[bool, float | None, str]:
    """``(promoted, champion's score on the same photos, reason)``."""
    try:
        previous = float(rescore(model_name, champion.version))
    except ChampionNotComparable as exc:
        return (
            True,
            None,
            f"champion v{champion.version} cannot be re-scored by this code ({exc}); "
            "the candidate replaces it",
        )
    margin = score - previous
    promoted = margin > 0 and margin >= min_delta - _SCORE_TOLERANCE
    relation = ">=" if promoted else "<"
    return (
        promoted,
        previous,
        f"margin {margin:+.4f} {relation} {min_delta:.4f} over v{champion.version} "
        f"re-scored on the same val photos ({previous:.4f}; registered with "
        + (f"{champion.stored_score:.4f}" if champion.stored_score is not None else "no score")
        + " on its own)",
    )


def promote_if_better(
    model_name: str,
    version: str,
    score: float,
    *,
    rescore: ChampionScorer,
    min_delta: float = DEFAULT_MIN_DELTA,
    tracking_uri: str | None = None,
    publish: Callable[[], Path] | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> ChampionDecision:
    """The promotion gate: ``@champion`` moves to ``version`` only when it is better.

    Under :func:`champion_lock`: read the champion; re-score it with ``rescore`` on the
    photos ``score`` was measured on; move the alias when ``score`` beats that by at least
    ``min_delta`` (strictly more, whatever ``min_delta``); then ``publish()`` the new
    champion's export. So two gates finishing together are decided one after the other,
    and the second compares itself with the first.

    No champion yet: the candidate is the first. A champion this code cannot run
    (:class:`ChampionNotComparable`) is replaced, the reason says so. A retried step
    that finds ``version`` already champion keeps it and publishes again (idempotent).

    Args:
        model_name (str): the registered model (``skin-classifier``).
        version (str): the candidate's registered version.
        score (float): the candidate's val macro-F1 (on the photos ``rescore`` uses).
        rescore (ChampionScorer): scores a registered version on those same photos.
        min_delta (float): the improvement needed (``PROMOTION_MIN_DELTA``).
        tracking_uri (str | None): the store (default: MLflow's current one).
        publish (Callable[[], Path] | None): publishes the candidate's export; called
            under the lock when it is (or stays) champion.
        lock_wait_s (float): how long to wait for another gate on the same store.

    Raises:
        ServiceUnavailableError: the registry could not be read or written; nothing moved.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = str(version)
    with champion_lock(uri, lock_wait_s):
        champion = current_champion(client, model_name)
        previous_score: float | None = None
        if champion is not None and champion.version == version:  # a retry after the alias moved
            promoted, reason = True, "already champion (a retried step)"
        elif champion is None:
            promoted, reason = True, "no champion yet: the first model is champion"
        else:
            try:
                promoted, previous_score, reason = _compare(
                    score, champion, rescore, model_name, min_delta
                )
            except MlflowException as exc:  # downloading the champion's model
                raise _registry_error(
                    f"fetching {model_name} v{champion.version} to re-score it", client, exc
                ) from None
        if promoted and (champion is None or champion.version != version):
            try:
                client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
            except (MlflowException, OSError) as exc:
                raise _registry_error(
                    f"moving @{CHAMPION_ALIAS} to v{version}", client, exc
                ) from None
        decision = ChampionDecision(
            model_name=model_name,
            version=version,
            promoted=promoted,
            score=float(score),
            previous_version=champion.version if champion else None,
            previous_score=previous_score,
            min_delta=min_delta,
            reason=reason,
        )
        if decision.promoted and publish is not None:
            decision = replace(decision, published_dir=publish())
    return decision


def log_decision(client: MlflowClient, run_id: str, decision: ChampionDecision) -> None:
    """Record the gate's decision on the candidate's run (active or finished).

    Tags ``promotion_decision`` (promoted / kept / deferred), ``promotion_reason``,
    ``champion_decision`` (the same), ``champion_decision_summary``,
    ``champion_previous_version``; metrics ``champion_candidate_val_macro_f1``,
    ``champion_val_macro_f1_same_photos``, ``promotion_margin`` and
    ``promotion_min_delta``. Metrics and tags, not params: a retried gate logs again.

    Raises:
        ServiceUnavailableError: the store refused (one line).
    """
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    tags = {
        "registered_model": decision.model_name,
        "registered_version": decision.version,
        "promotion_decision": decision.outcome,
        "promotion_reason": decision.reason,
        "champion_decision": decision.outcome,
        "champion_decision_summary": decision.summary,
        "champion_previous_version": decision.previous_version or "none",
    }
    if decision.published_dir is not None:
        tags["published_dir"] = str(decision.published_dir)
    metrics = {"champion_candidate_val_macro_f1": decision.score}
    if not decision.deferred_to_gate:
        metrics["promotion_min_delta"] = decision.min_delta
    if decision.previous_score is not None and decision.margin is not None:
        metrics["champion_val_macro_f1_same_photos"] = decision.previous_score
        metrics["promotion_margin"] = decision.margin
    now = int(time.time() * 1000)
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
            tags=[RunTag(key, value) for key, value in tags.items()],
        )
    except (MlflowException, OSError) as exc:
        raise _registry_error(f"logging the decision on run {run_id}", client, exc) from None


def register_and_promote(
    model_uri: str,
    model_name: str,
    score: float,
    *,
    run_id: str,
    rescore: ChampionScorer,
    min_delta: float = DEFAULT_MIN_DELTA,
    tags: Mapping[str, str] | None = None,
) -> ChampionDecision:
    """:func:`register_version`, then :func:`promote_if_better` (without publishing)."""
    version = register_version(model_uri, model_name, score, run_id=run_id, tags=tags)
    return promote_if_better(model_name, version, score, rescore=rescore, min_delta=min_delta)
