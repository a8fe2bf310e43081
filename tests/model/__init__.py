"""The model suite (``-m model``): a real exported or registered model on real val photos.

Run it against a model and its photos (``--data-dir`` holds ``val/<label>/*``; without it
the dataset config's ``val`` split is used)::

    uv run pytest -m model --model-source=runs/skin5-current --data-dir=data/raw

What it asserts (thresholds are options; defaults suit the CI model of ``.ci/run``,
trained by ``tests/utils/make_ci_model.py`` on generated photos):

* EXIF orientation 1-8 (``test_orientation``): a lossless copy of each val photo stored as
  a camera would for each tag gives the *identical* model input (the preprocessing's
  claim), and a JPEG copy (quality 95) keeps the top-1 on >= ``--min-invariance`` of them;
* dihedral invariance: the 7 other quarter turns / mirror images of the model input keep
  the top-1 on >= ``--min-invariance`` of the val photos, each;
* val macro-F1 >= ``--min-macro-f1``; ECE (15 bins) of the served probabilities
  (``softmax(logits / temperature)``) <= ``--max-ece`` (``test_quality``);
* ONNX (served) vs Keras (``model/model.keras``): max |p_onnx - p_keras| <=
  ``--max-prob-delta`` and the same top-1 on every photo (``test_parity``; TensorFlow
  needed; a ``models:/`` source carries no Keras file and this test is skipped).

Benchmark-sized run (default recipe on dermnet5, 129 val photos; the val ECE noise floor
there is ~0.08, and the temperature is fitted on the same photos)::

    uv run pytest -m "model or data" --model-source=runs/skin5-current \
        --data-dir=../shared/datasets/dermnet5 --min-macro-f1=0.75 --max-ece=0.12
"""
