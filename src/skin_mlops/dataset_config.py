"""The dataset config YAML (``configs/dataset_config.yaml`` by default).

It names the dataset, where each split's ``<label>/`` folders live, the label order
(which fixes every model's class index), the SQLite metadata DB and the bucket/prefix
under which ingested images are stored. Unknown keys are an error, not a silent typo.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skin_mlops.core.errors import ConfigError


class StorageSection(BaseModel):
    """Where ingested objects go: ``<bucket>/<prefix>/<split>/<label>/<name>``."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = "skin-processed"
    prefix: str = "skin"


class AcceptedDuplicate(BaseModel):
    """Two photos of different splits known to be the same picture, reviewed and kept.

    The data suite (``tests/data``) fails on any cross-split near-duplicate that is not
    listed here, and on a listed pair it no longer finds; training leaves the val photo
    of every such pair out of val (``val_near_duplicates``) whether listed or not.
    """

    model_config = ConfigDict(extra="forbid")

    photos: tuple[str, str]  # ``split/label/file``, as the data suite names them
    reason: str = Field(min_length=1)


class DatasetConfig(BaseModel):
    """A validated dataset config."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1)
    splits: dict[str, Path] = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    metadata_db: Path = Path("data/metadata/skin_metadata.db")
    storage: StorageSection = StorageSection()
    # what a reviewer should know, copied into every model card trained on it
    description: str = ""
    known_flaws: list[str] = Field(default_factory=list)
    accepted_near_duplicates: list[AcceptedDuplicate] = Field(default_factory=list)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"labels listed twice: {', '.join(dupes)}")
        return labels

    @property
    def label_to_index(self) -> dict[str, int]:
        """``{label: class index}`` in config order."""
        return {label: i for i, label in enumerate(self.labels)}

    def split_root(self, split: str) -> Path:
        """The folder holding ``<label>/`` subfolders for ``split``."""
        try:
            return self.splits[split]
        except KeyError:
            raise ConfigError(
                f"split {split!r} is not in the dataset config (known: {', '.join(self.splits)})"
            ) from None

    def unknown_label_folders(self, split: str) -> list[str]:
        """Sub-folders of a split root that are not configured labels (reported, skipped)."""
        root = self.split_root(split)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in self.labels)

    def missing_label_folders(self, split: str) -> list[str]:
        """Configured labels that have no folder under the split root."""
        root = self.split_root(split)
        return [label for label in self.labels if not (root / label).is_dir()]


def load_dataset_config(path: Path | str) -> DatasetConfig:
    """Read and validate a dataset config YAML; any problem is one :class:`ConfigError` line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset config not found: {path} (pass --config <yaml>)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"dataset config {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        # PyYAML's str(exc) spans several lines; keep the one-line contract.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"dataset config {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"dataset config {path} must be a mapping of keys")
    try:
        config = DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}")
        raise ConfigError(f"dataset config {path}: " + "; ".join(problems)) from None
    return config.model_copy(update={"source": path})
