"""Test helpers shared by several test folders (import them as ``utils.<module>``).

* :mod:`utils.images` - small encoded test images (colours, EXIF orientation).
* :mod:`utils.model_factory` - tiny exported models that honour the model contract.
* :mod:`utils.servers` - a live API server in a thread, free ports, child processes.
* :mod:`utils.tools` - external binaries a test needs (fail under ``CI=true``, else skip).
* :mod:`utils.prometheus` - metric parsing, a real Prometheus on a free port, PromQL names.
* :mod:`utils.grafana` - the provisioned dashboards, their panels and queries.
* :mod:`utils.suite_options` - the options of the model and data suites (``-m model/data``).
* :mod:`utils.model_checks` - scoring a real model on val photos for ``tests/model``.
* :mod:`utils.perceptual` - exact and perceptual (pHash) duplicates across splits.
* :mod:`utils.make_ci_model` - the small real model ``.ci/run`` trains for those suites.
"""
