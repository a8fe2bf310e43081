"""Dataset ingestion: ``data/raw/<split>/<label>/*`` -> object store + ``lesions_data``.

``skin-mlops ingest --splits train val [--dry-run]`` (and
:func:`~skin_mlops.ingestion.run.run_ingestion` for the Airflow DAG) does, for every file
under each requested ``<split>/<label>/`` folder, one step per module, read in this order:

* :mod:`~skin_mlops.ingestion.run` - ``run_ingestion()``: checks its arguments, takes the
  lock, runs the steps below in order and returns the summary;
* :mod:`~skin_mlops.ingestion.lock` - one ingestion at a time per metadata DB, never while
  a training reads it (``metadata_lock``, an ``flock`` released even on SIGKILL);
* :mod:`~skin_mlops.ingestion.scan` - 1. list the files with their ``stat()``
  fingerprints (symlinks leaving the data root skipped); unchanged files are not read again;
* :mod:`~skin_mlops.ingestion.verify` - 2. read, SHA-256, sniff by content, prove whole
  (structure: JPEG end-of-image, PNG chunk CRCs; or a decode), in a thread pool;
* :mod:`~skin_mlops.ingestion.resolve` - 3-4. resolve in path order (duplicates, unchanged,
  new), upload, commit each row only *after* its object is stored;
* :mod:`~skin_mlops.ingestion.keys` - the collision-safe object keys
  ``<prefix>/<split>/<label>/<stem>-<sha256[:16]>.<ext>``, read back, listed;
* :mod:`~skin_mlops.ingestion.reconcile` - 5. missing rows, label conflicts, train/val
  leakage, and objects without rows (crash leftovers: adopted or deleted);
* :mod:`~skin_mlops.ingestion.report` - the summary as data (``to_dict()`` for XCom) and as
  the CLI's table;
* :mod:`~skin_mlops.ingestion.cli` - the ``ingest`` command.

Crash safety follows from the order: object first, row second, reconcile on every run.
``--dry-run`` refreshes the metadata (scan cache, missing/conflict marks) and never touches
the object store.

This package is empty on import (as :mod:`skin_mlops.api` is): import from the modules.
"""
