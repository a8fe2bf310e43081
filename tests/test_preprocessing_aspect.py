"""Extreme aspect ratios must not blow up memory in ``resize_center_crop``.

A 1x20000 PNG is a few hundred bytes and passes the pixel-count bomb check, but resizing
its short side to 224 first would allocate a 224 x 4,480,000 RGB image (3 GB).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from skin_mlops.preprocessing import resize_center_crop

_STRIP_SCRIPT = """
import resource, numpy as np
from PIL import Image
from skin_mlops.preprocessing import resize_center_crop
strip = Image.fromarray(np.tile(np.arange(20000, dtype=np.uint32)[:, None] % 256, (1, 1)).astype(np.uint8)).convert("RGB")
out = resize_center_crop(strip, 224)
assert out.size == (224, 224), out.size
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


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
