"""skin-mlops: an end-to-end MLOps platform for skin-disease photo classification."""

__version__ = "0.1.0"
