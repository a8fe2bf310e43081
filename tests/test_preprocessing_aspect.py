"""Extreme aspect ratios must not blow up memory in ``resize_center_crop``.

A 1x20000 PNG is a few hundred bytes and passes the pixel-count bomb check, but resizing
its short side to 224 first would allocate a 224 x 4,480,000 RGB image (3 GB).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_mlops.preprocessing import resize_center_crop

# VmHWM (peak RSS of this process image) rather than ru_maxrss, which a child inherits
# from a big parent (pytest with TensorFlow loaded) across fork + exec.
_STRIP_SCRIPT = """
import numpy as np
from PIL import Image
from skin_mlops.preprocessing import resize_center_crop
column = (np.arange(20000) % 256).astype(np.uint8)[:, None]
strip = Image.fromarray(column).convert("RGB")
out = resize_center_crop(strip, 224)
assert out.size == (224, 224), out.size
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_thin_strip_is_cropped_with_bounded_memory() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _STRIP_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.strip())
    assert peak_mib < 400, f"peak RSS {peak_mib} MiB for a 1x20000 strip"


def test_strip_crop_keeps_the_central_rows() -> None:
    rows = np.repeat((np.arange(1000) % 200).astype(np.uint8)[:, None], 10, axis=1)  # 10 x 1000
    strip = Image.fromarray(rows).convert("RGB")
    out = np.asarray(resize_center_crop(strip, 20))[..., 0].astype(int)
    # the crop covers source rows 495..505 (centre), scaled x2: values near 95..105
    assert abs(out.mean() - 100) < 2


def test_ordinary_photos_keep_the_plain_resize_then_crop() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    resized = img.resize((299, 224), Image.Resampling.BILINEAR, reducing_gap=None)
    expected = np.asarray(resized.crop((37, 0, 261, 224)))
    assert np.array_equal(np.asarray(resize_center_crop(img, 224)), expected)
