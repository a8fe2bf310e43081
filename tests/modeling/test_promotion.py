"""The promotion step as the Airflow task runs it (:func:`promotion.promote_run`): the
champion re-scored on the candidate run's logged val photos, the decision logged on the
run, the export published from the models bucket; real MLflow SQLite store, real local
object store, tiny ONNX colour models."""

from __future__ import annotations

import pytest

from skin_mlops import export_format
from skin_mlops.core.errors import DataError
from skin_mlops.modeling import tracking
from skin_mlops.modeling.promotion import promote_run
from skin_mlops.storage import make_object_store


def test_promote_run_rescores_the_champion_on_the_candidates_photos(champion_kit) -> None:
    import mlflow

    settings = champion_kit.settings
    experiment_id = tracking.connect(settings)
    store = make_object_store(settings)
    store.ensure_bucket(settings.s3_models_bucket)
    photos = champion_kit.val_photos(per_label=2)
    kit = champion_kit

    def register(weights, score: float):  # noqa: ANN001
        return kit.register(experiment_id, weights, score, val_set=photos.val_set, store=store)

    # v1 was registered with a high score on its own val set; on these photos it is wrong
    _, v1 = register(kit.wrong, 0.97)
    first = promote_run(v1, settings=settings, store=store)
    assert first.promoted and first.previous_version is None
    run2, v2 = register(kit.perfect, 1.0)  # its score on these photos (its val set)
    second = promote_run(v2, settings=settings, store=store)
    assert second.promoted and second.previous_version == v1
    assert second.previous_score == 0.0 and second.margin == 1.0 and second.min_delta == 0.01
    link = settings.model_dir
    published = export_format.read_signature(export_format.resolve_export_dir(link))
    assert published.run_id == run2
    assert second.published_dir == export_format.resolve_export_dir(link)

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    logged = client.get_run(run2).data
    assert logged.tags["promotion_decision"] == "promoted"
    assert "re-scored on the same val photos" in logged.tags["promotion_reason"]
    assert logged.metrics["champion_val_macro_f1_same_photos"] == 0.0
    assert logged.metrics["promotion_margin"] == 1.0
    assert logged.metrics["promotion_min_delta"] == 0.01
    assert logged.tags["champion_previous_version"] == v1

    # a retried step decides the same, moves nothing, publishes nothing new
    held = export_format.resolve_export_dir(link)
    retried = promote_run(v2, settings=settings, store=store)
    assert retried.promoted and "already holds" in retried.summary
    assert export_format.resolve_export_dir(link) == held

    run3, v3 = register(kit.perfect, 1.0)  # as good as v2 on these photos: not enough
    kept = promote_run(v3, settings=settings, store=store)
    assert not kept.promoted and kept.outcome == "kept" and kept.previous_score == 1.0
    assert kept.margin == 0.0 and kept.published_dir is None
    assert client.get_run(run3).data.tags["promotion_decision"] == "kept"
    assert str(client.get_model_version_by_alias("skin-classifier", "champion").version) == v2
    assert export_format.resolve_export_dir(link) == held


def test_a_candidate_without_its_val_photos_cannot_be_compared(champion_kit) -> None:
    import mlflow

    settings = champion_kit.settings
    experiment_id = tracking.connect(settings)
    store = make_object_store(settings)
    store.ensure_bucket(settings.s3_models_bucket)
    _, v1 = champion_kit.register(experiment_id, champion_kit.perfect, 0.9, store=store)
    promote_run(v1, settings=settings, store=store)
    _, v2 = champion_kit.register(experiment_id, champion_kit.perfect, 0.99, store=store)
    with pytest.raises(DataError, match="has no evaluation/val_set.json") as caught:
        promote_run(v2, settings=settings, store=store)
    assert "\n" not in str(caught.value)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("skin-classifier", "champion").version) == v1
