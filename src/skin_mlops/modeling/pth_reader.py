"""Read a PyTorch checkpoint (``state_dict``) into numpy arrays, without PyTorch.

``torch.save`` writes pickles whose only references are a handful of torch globals
(storage classes, tensor rebuild functions). :func:`read_state_dict` unpickles with a
restricted :class:`pickle.Unpickler` that maps exactly those globals to numpy
rebuilders and refuses everything else, so a checkpoint cannot run code on load.

Both on-disk layouts are supported:

* **legacy** (``_use_new_zipfile_serialization=False``, torch < 1.6): five pickles in a
  row (magic number, protocol version, system info, the object, the storage keys), then
  each storage's raw bytes prefixed by its element count (int64);
* **zip** (torch >= 1.6): ``<root>/data.pkl`` plus one raw file per storage,
  ``<root>/data/<key>``.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype (little endian, as torch writes on x86/arm).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint we can read safely."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the numpy dtype."""

    dtype: np.dtype


@dataclass
class _Storage:
    """One flat storage; ``data`` is filled once its bytes have been read."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _PendingTensor:
    """A tensor whose storage bytes may come after the pickle (legacy layout)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def materialize(self) -> np.ndarray:
        """Copy the (possibly strided) view out of the storage as a contiguous array."""
        if self.storage.data is None:
            raise CheckpointError("a tensor refers to a storage that was never read")
        flat = self.storage.data
        if not self.shape:
            return np.array(flat[self.offset])  # 0-d array
        itemsize = flat.dtype.itemsize
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if min(self.shape) > 0 and (self.offset < 0 or last >= flat.size):
            raise CheckpointError("a tensor view runs past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, order="C", copy=True)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _PendingTensor:
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _PendingTensor, requires_grad: bool, backward_hooks: object):
    return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }
    for name, dtype in STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(dtype)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the torch globals a ``state_dict`` needs; refuses anything else."""

    _ALLOWED = _allowed_globals()

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, saved_id: Any) -> _Storage:
        # legacy: ('storage', type, key, location, numel, view_metadata)
        # zip:    ('storage', type, key, location, numel)
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {saved_id!r:.60}")
        storage_type, key, _location, numel = saved_id[1:5]
        if len(saved_id) > 5 and saved_id[5] is not None:
            raise CheckpointError("storage views (very old torch) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r:.60}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _resolve(obj: Any) -> Any:
    """Replace every pending tensor in a nest of dicts/lists/tuples by its numpy array."""
    if isinstance(obj, _PendingTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        resolved = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for key, value in obj.items():
            resolved[key] = _resolve(value)
        return resolved
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _read_legacy(file: IO[bytes]) -> Any:
    plain = _RestrictedUnpickler(file, {})  # the three header pickles use no globals
    if plain.load() != LEGACY_MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    plain.load()  # protocol version
    sys_info = plain.load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(file, storages).load()
    keys = _RestrictedUnpickler(file, {}).load()
    for key in keys:
        storage = storages[str(key)]
        (count,) = struct.unpack("<q", file.read(8))
        raw = file.read(count * storage.dtype.itemsize)
        if count != storage.numel or len(raw) != count * storage.dtype.itemsize:
            raise CheckpointError(f"storage {key} is truncated or inconsistent")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return result


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError("zip checkpoint without exactly one data.pkl")
        root = pickles[0].removesuffix("data.pkl")
        storages: dict[str, _Storage] = {}
        with archive.open(pickles[0]) as handle:
            result = _RestrictedUnpickler(handle, storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{root}data/{key}")
            if len(raw) < storage.numel * storage.dtype.itemsize:
                raise CheckpointError(f"storage {key} is truncated")
            storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return result


def read_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """Load a PyTorch ``state_dict`` checkpoint as ``{name: numpy array}``, in file order.

    Args:
        path (Path | str): a ``.pth``/``.pt`` file written by ``torch.save(state_dict)``.

    Returns:
        dict[str, np.ndarray]: every tensor, bit-exact, with its shape and dtype.

    Raises:
        CheckpointError: not a checkpoint, truncated, or it needs a global outside the
            allow-list (e.g. a pickled ``nn.Module`` rather than a ``state_dict``).
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            result = _read_zip(path)
        else:
            with path.open("rb") as file:
                result = _read_legacy(file)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path.name}: unreadable checkpoint ({exc})") from None
    state = _resolve(result)
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(f"{path.name}: not a state_dict of tensors")
    return state
