"""The data suite (``-m data``): the real photo folders, before anything trains on them.

    uv run pytest -m data --data-dir=data/raw [--dataset-config=configs/dataset_config.yaml]

``test_photo_tree`` asserts, for ``<data-dir>/<split>/<label>/*`` and the dataset config:
every file decodes with the training/serving preprocessing; the label folders of every
split are exactly the config's labels (none unknown, none missing or empty); no exact
duplicate (SHA-256) across splits or labels; no perceptual duplicate (pHash within
``--phash-distance`` bits, in any of the 8 orientations) across splits.
``test_duplicate_finder`` (no marker: it runs by default) proves the finder catches a
re-encoded, resized copy of a val photo put in train, on generated photos.
"""
