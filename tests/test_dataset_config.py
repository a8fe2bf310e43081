"""The dataset config YAML: the shipped default is valid, and every kind of bad file gives
one :class:`ConfigError` line that says what is wrong (never a stack trace or a silent typo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin_mlops.core.errors import ConfigError
from skin_mlops.dataset_config import DatasetConfig, load_dataset_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "dataset_config.yaml"
DERMNET5_LABELS = [
    "acne",
    "actinic_keratosis",
    "atopic_dermatitis",
    "basal_cell_carcinoma",
    "lichen_planus",
]

VALID_YAML = """\
dataset: tiny
splits:
  train: {root}/train
  val: {root}/val
labels: [cat, dog, fox]
metadata_db: {root}/meta.db
storage:
  bucket: skin-processed
  prefix: skin
"""


def write_config(tmp_path: Path, text: str, name: str = "dataset.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    """Load ``path``, expect a ConfigError, and return its message (checked to be one line)."""
    with pytest.raises(ConfigError) as info:
        load_dataset_config(path)
    message = str(info.value)
    assert "\n" not in message, f"error must be one line, got: {message!r}"
    assert message.strip() == message and message
    return message


# --- the shipped default ---------------------------------------------------------------------


def test_default_config_matches_the_documented_layout() -> None:
    config = load_dataset_config(DEFAULT_CONFIG)
    assert config.dataset == "dermnet5"
    assert config.labels == DERMNET5_LABELS
    assert config.splits == {"train": Path("data/raw/train"), "val": Path("data/raw/val")}
    assert config.metadata_db == Path("data/metadata/skin_metadata.db")
    assert config.storage.bucket == "skin-processed"
    assert config.storage.prefix == "skin"
    assert config.source == DEFAULT_CONFIG


def test_label_order_fixes_the_class_index(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=tmp_path)))
    assert config.label_to_index == {"cat": 0, "dog": 1, "fox": 2}
    assert config.split_root("val") == tmp_path / "val"


def test_source_is_not_part_of_the_serialised_config(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=tmp_path)))
    dumped = config.model_dump()
    assert "source" not in dumped
    # What is dumped validates back to the same config (no hidden state).
    assert DatasetConfig.model_validate(dumped).labels == config.labels


# --- bad files: one clear line each ------------------------------------------------------------


def test_missing_file_names_the_path_and_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    message = load_error(missing)
    assert str(missing) in message
    assert "not found" in message and "--config" in message


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    assert "not found" in load_error(tmp_path)


def test_invalid_yaml_is_one_line_with_the_position(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dataset: x\nlabels: [a, b\nsplits: {}\n")
    message = load_error(path)
    assert "not valid YAML" in message
    assert str(path) in message
    assert "line 3" in message  # where PyYAML noticed the unclosed list


def test_binary_file_is_reported_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81 not text")
    assert "UTF-8" in load_error(path)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "must be a mapping" in load_error(write_config(tmp_path, text))


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    text = VALID_YAML.format(root=tmp_path) + "lables: [typo]\n"
    message = load_error(write_config(tmp_path, text))
    assert "lables: unknown key" in message


def test_unknown_nested_key_is_named_with_its_path(tmp_path: Path) -> None:
    text = VALID_YAML.format(root=tmp_path).replace("  prefix: skin", "  prefix: skin\n  region: x")
    message = load_error(write_config(tmp_path, text))
    assert "storage.region: unknown key" in message


def test_duplicate_labels_are_listed(tmp_path: Path) -> None:
    text = VALID_YAML.format(root=tmp_path).replace("[cat, dog, fox]", "[cat, dog, cat, fox, dog]")
    message = load_error(write_config(tmp_path, text))
    assert "labels" in message
    assert "listed twice: cat, dog" in message
    assert "Value error" not in message  # pydantic's prefix is noise for a user


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = "dataset: ''\nsplits: {}\nlabels: [only_one]\nextra: 1\n"
    message = load_error(write_config(tmp_path, text))
    for key in ("dataset", "splits", "labels", "extra: unknown key"):
        assert key in message


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    message = load_error(write_config(tmp_path, "dataset: x\nlabels: [a, b]\n"))
    assert "splits" in message and "required" in message.lower()


def test_unknown_split_is_a_config_error_listing_known_splits(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=tmp_path)))
    with pytest.raises(ConfigError) as info:
        config.split_root("test")
    assert "'test'" in str(info.value) and "train, val" in str(info.value)


# --- label folders ----------------------------------------------------------------------------


def test_label_folder_helpers_report_strays_and_gaps(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=tmp_path)))
    train = tmp_path / "train"
    for name in ("cat", "fox", "zebra", "Dog"):  # Dog: wrong case is not dog
        (train / name).mkdir(parents=True)
    (train / "notes.txt").write_text("a file is not a label folder")

    assert config.unknown_label_folders("train") == ["Dog", "zebra"]
    assert config.missing_label_folders("train") == ["dog"]


def test_label_folder_helpers_on_a_missing_split_root(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=tmp_path)))
    # No val/ folder at all: nothing stray, every label missing.
    assert config.unknown_label_folders("val") == []
    assert config.missing_label_folders("val") == ["cat", "dog", "fox"]


def test_label_folder_helpers_when_everything_matches(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=tmp_path)))
    for label in config.labels:
        (tmp_path / "val" / label).mkdir(parents=True)
    assert config.unknown_label_folders("val") == []
    assert config.missing_label_folders("val") == []


def test_accepted_near_duplicates_need_two_photos_and_a_reason(tmp_path: Path) -> None:
    root = tmp_path.as_posix()
    accepted = (
        "accepted_near_duplicates:\n"
        "  - photos: [train/cat/a.jpg, val/cat/b.jpg]\n"
        "    reason: the same picture saved twice\n"
    )
    config = load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=root) + accepted))
    assert config.accepted_near_duplicates[0].photos == ("train/cat/a.jpg", "val/cat/b.jpg")
    no_reason = "accepted_near_duplicates:\n  - photos: [train/cat/a.jpg, val/cat/b.jpg]\n"
    with pytest.raises(ConfigError, match="reason"):
        load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=root) + no_reason))
    one_photo = "accepted_near_duplicates:\n  - {photos: [a.jpg], reason: x}\n"
    with pytest.raises(ConfigError, match="photos"):
        load_dataset_config(write_config(tmp_path, VALID_YAML.format(root=root) + one_photo))


def test_the_shipped_config_lists_dermnet5_s_two_reviewed_pairs() -> None:
    pairs = load_dataset_config(DEFAULT_CONFIG).accepted_near_duplicates
    assert len(pairs) == 2
    assert all(p.photos[0].startswith("train/") and p.photos[1].startswith("val/") for p in pairs)
