"""HTTP routes: prediction, health/readiness, model info, metrics, admin."""
