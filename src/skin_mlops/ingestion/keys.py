"""Object keys: how an image is named in the store, how a name is read back, and what the
store already holds under the requested splits.

A key is ``<prefix>/<split>/<label>/<safe stem>-<sha256[:16]>.<ext>``: readable, and
collision-safe because the content hash is in the name (two different images never share
a key; the same image always gets the same key, so a rerun after a crash overwrites, never
forks). When the short hash would name other bytes, the full hash is used instead.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path

from skin_mlops.ingestion.verify import FORMAT_EXTENSIONS
from skin_mlops.metadata import LesionRecord
from skin_mlops.storage import ObjectStore

_KEY_NAME_RE = re.compile(r"^(?P<stem>.+)-(?P<sha>[0-9a-f]{16}|[0-9a-f]{64})\.(?P<ext>jpg|png)$")
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._-]+")


def object_key_for(
    prefix: str,
    split: str,
    label: str,
    source_name: str,
    sha256: str,
    image_format: str,
    *,
    full_hash: bool = False,
) -> str:
    """``<prefix>/<split>/<label>/<safe stem>-<sha256[:16]>.<ext>``: readable, collision-safe.

    The content hash in the name makes two different images never share a key, and the
    same image always get the same key (so a rerun after a crash overwrites, never forks).
    """
    stem = _UNSAFE_CHARS_RE.sub("_", Path(source_name).stem).strip("._-")[:64] or "image"
    digest = sha256 if full_hash else sha256[:16]
    name = f"{stem}-{digest}.{FORMAT_EXTENSIONS[image_format]}"
    return "/".join(part for part in (prefix.strip("/"), split, label, name) if part)


def claim_key(
    key_owner: dict[str, str],
    prefix: str,
    split: str,
    label: str,
    source_name: str,
    sha256: str,
    image_format: str,
) -> str:
    """The key for new bytes, recorded in ``key_owner`` (key -> sha256 of what it holds).

    The short-hash key unless it already names other bytes, then the full-hash one.
    """
    key = object_key_for(prefix, split, label, source_name, sha256, image_format)
    if key_owner.get(key, sha256) != sha256:
        key = object_key_for(
            prefix, split, label, source_name, sha256, image_format, full_hash=True
        )
    key_owner[key] = sha256
    return key


def split_prefix(prefix: str, split: str) -> str:
    """Where a split's objects live: ``<prefix>/<split>/`` (``<split>/`` without a prefix)."""
    return f"{prefix}/{split}/" if prefix else f"{split}/"


def parse_key(
    key: str, prefix: str, splits: Iterable[str], labels: Collection[str]
) -> tuple[str, str, str] | None:
    """``(split, label, sha256 prefix)`` of a key this code writes, else ``None``."""
    for split in splits:
        rest = key.removeprefix(split_prefix(prefix, split))
        if rest == key:
            continue
        label, _, name = rest.partition("/")
        match = _KEY_NAME_RE.match(name)
        if label in labels and match:
            return split, label, match["sha"]
    return None


def list_store_keys(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    splits: list[str],
    rows: dict[tuple[str, str, str], LesionRecord],
) -> set[str]:
    """Keys already in the store under the requested splits (one listing per split).

    Creates the bucket when it does not exist yet.
    """
    store.ensure_bucket(bucket)
    prefixes = {split_prefix(prefix, split) for split in splits}
    # Rows written under another prefix (the config's prefix changed): list their
    # folders too, so their objects are not mistaken for lost ones.
    for row in rows.values():
        folder = row.object_key.rsplit("/", 1)[0] + "/"
        if row.split in splits and not folder.startswith(tuple(prefixes)):
            prefixes.add(folder)
    keys: set[str] = set()
    for listed in sorted(prefixes):
        keys.update(store.list_keys(bucket, listed))
    return keys
