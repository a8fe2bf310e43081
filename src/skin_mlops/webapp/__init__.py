"""The web app: a Streamlit page to try the classifier (``skin-mlops webapp``).

Modules, read in this order:

* :mod:`~skin_mlops.webapp.client` - the only way to the prediction API (HTTP, typed answers,
  one exception hierarchy);
* :mod:`~skin_mlops.webapp.logic` - every decision the page makes, as plain functions;
* :mod:`~skin_mlops.webapp.metrics` - the Prometheus exporter (own registry and port);
* :mod:`~skin_mlops.webapp.app` - the Streamlit page, which only draws;
* :mod:`~skin_mlops.webapp.cli` - the command that runs Streamlit on the page.

The web app imports neither TensorFlow nor ONNX Runtime: its image installs the ``webapp``
dependency group only, and it talks to the model through the API alone.
"""
