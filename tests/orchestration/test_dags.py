"""The DAG folder: it parses, the DAGs have the promised shape, params are validated, and
both DAGs run end to end with ``dag.test()`` on generated photos (embedded defaults)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ingest_fixtures import TEST_LABELS, RawDataset, image_bytes
from skin_mlops.orchestration.params import TRAIN_PARAMS, run_params

from .conftest import DAGS

pytestmark = pytest.mark.timeout(900)


def populate(dataset: RawDataset, per_label: int) -> None:
    for split in ("train", "val"):
        for index, label in enumerate(TEST_LABELS):
            for n in range(per_label if split == "train" else max(1, per_label // 2)):
                dataset.add(split, label, f"{label}-{n}", seed=1000 * index + 10 * n + len(split))


# --- structure ------------------------------------------------------------------------------


def test_the_dag_folder_has_no_import_errors(dagbag) -> None:  # noqa: ANN001
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"ingestion", "train_model_pipeline"}


def test_ingestion_runs_daily_without_catch_up(dagbag) -> None:  # noqa: ANN001
    dag = dagbag.dags["ingestion"]
    assert dag.schedule == "@daily" and dag.catchup is False
    assert [t.task_id for t in dag.tasks] == ["ingest_raw_data"]
    assert dag.tasks[0].retries == 3, "store errors are retried"


def test_training_pipeline_runs_weekly_one_at_a_time_in_order(dagbag) -> None:  # noqa: ANN001
    dag = dagbag.dags["train_model_pipeline"]
    assert dag.schedule == "@weekly" and dag.catchup is False and dag.max_active_runs == 1
    order = ["sync_dataset", "train_model", "evaluate_and_promote", "reload_api"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task("train_model").retries <= 1, "no blind retries of a long job"
    assert all(t.execution_timeout is not None for t in dag.tasks)


def test_training_params_have_the_promised_defaults(dagbag) -> None:  # noqa: ANN001
    params = dagbag.dags["train_model_pipeline"].params
    assert {name: params[name] for name in TRAIN_PARAMS} == {
        "epochs": 30,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "image_size": None,
        "backbone": None,
        "teacher_image_size": 0,
        "keep_leaked_val": False,
    }


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("epochs", -1, "less than the minimum of 1"),
        ("epochs", 501, "greater than the maximum of 500"),
        ("epochs", "ten", "is not of type 'integer'"),
        ("batch_size", 0, "less than the minimum of 1"),
        ("batch_size", 2048, "greater than the maximum of 1024"),
        ("learning_rate", 0, "less than or equal to the minimum of 0"),
        ("learning_rate", 2.0, "greater than the maximum of 1"),
        ("backbone", "resnet50", "is not one of"),
        ("teacher_image_size", -1, "less than the minimum of 0"),
    ],
)
def test_a_bad_param_is_refused_naming_it(dagbag, name: str, value: object, words: str) -> None:  # noqa: ANN001
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dagbag.dags["train_model_pipeline"].params)
    with pytest.raises(Exception, match=name) as caught:
        params[name] = value
    assert words in str(caught.value)


def test_unknown_conf_keys_are_reported_in_the_task_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        params = run_params({"epochs": 3}, {"epochs": 3, "epoch": 5, "lr": 1})
    assert params["epochs"] == 3 and "epoch" not in params
    assert "ignored unknown conf key(s) epoch, lr" in caplog.text


def test_dag_files_import_nothing_heavy() -> None:
    """Heavy imports stay inside the tasks; the scheduler parses these files often."""
    code = (
        "import runpy, sys\n"
        f"for path in {[str(p) for p in sorted(DAGS.glob('*.py'))]!r}:\n"
        "    runpy.run_path(path)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'onnxruntime', "
        "'skin_mlops.modeling.train', 'skin_mlops.ingestion') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- end to end with dag.test() --------------------------------------------------------------


def xcom(dag_run, task_id: str):  # noqa: ANN001, ANN201
    ti = next(ti for ti in dag_run.get_task_instances() if ti.task_id == task_id)
    return ti.state, ti.xcom_pull(task_ids=task_id)


def test_a_conf_out_of_range_is_refused_before_any_task_runs(
    dagbag,  # noqa: ANN001
    airflow_db: Path,
    platform_env: RawDataset,
) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="epochs"):
        dagbag.dags["train_model_pipeline"].test(run_conf={"epochs": -1})
    assert not platform_env.db_path.exists(), "no task ran: nothing was ingested"


def test_ingestion_dag_succeeds_and_a_rerun_adds_nothing(
    dagbag,  # noqa: ANN001
    airflow_db: Path,
    platform_env: RawDataset,
) -> None:
    from airflow.utils.state import DagRunState

    populate(platform_env, per_label=2)
    dag = dagbag.dags["ingestion"]
    first = dag.test()
    assert first.state == DagRunState.SUCCESS
    state, counts = xcom(first, "ingest_raw_data")
    assert counts["new"] == 9 and counts["failed"] is False
    assert set(counts) >= {"new", "unchanged", "corrupt", "uploaded"}, "counts, not file lists"
    second = dag.test()
    assert second.state == DagRunState.SUCCESS
    _, again = xcom(second, "ingest_raw_data")
    assert (again["new"], again["unchanged"], again["uploaded"]) == (0, 9, 0)


def test_ingestion_dag_fails_on_a_corrupt_photo(
    dagbag,  # noqa: ANN001
    airflow_db: Path,
    platform_env: RawDataset,
) -> None:
    from airflow.utils.state import DagRunState

    populate(platform_env, per_label=1)
    broken = platform_env.raw / "train" / TEST_LABELS[0] / "broken.jpg"
    whole = image_bytes(seed=99)
    broken.write_bytes(whole[: len(whole) // 2])  # a truncated JPEG: corrupt
    run = dagbag.dags["ingestion"].test()
    assert run.state == DagRunState.FAILED


def test_training_pipeline_end_to_end_then_unchanged_data_keeps_the_champion(
    dagbag,  # noqa: ANN001
    airflow_db: Path,
    platform_env: RawDataset,
) -> None:
    import mlflow
    from airflow.utils.state import DagRunState, TaskInstanceState

    from skin_mlops.core.config import get_settings
    from skin_mlops.modeling.registry import CHAMPION_ALIAS

    populate(platform_env, per_label=6)
    dag = dagbag.dags["train_model_pipeline"]
    conf = {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "image_size": 64}

    first = dag.test(run_conf=conf)
    assert first.state == DagRunState.SUCCESS
    _, trained = xcom(first, "train_model")
    _, decision = xcom(first, "evaluate_and_promote")
    assert decision["promoted"] is True and decision["version"] == trained["model_version"]
    reload_state, _ = xcom(first, "reload_api")
    assert reload_state == TaskInstanceState.SKIPPED, "no API configured: a skip, not a failure"
    link = Path(get_settings().model_dir)
    assert link.is_symlink() and (link / "model" / "model.onnx").is_file()
    assert link.resolve().name == trained["export_version"]

    # a retried promotion decides the same and adds nothing
    from skin_mlops.orchestration import tasks

    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    name = get_settings().registered_model_name
    versions = len(client.search_model_versions(f"name='{name}'"))
    retried = tasks.evaluate_and_promote(trained)
    assert retried["promoted"] is True and "already holds" in retried["summary"]
    assert len(client.search_model_versions(f"name='{name}'")) == versions
    assert link.resolve().name == trained["export_version"]

    second = dag.test(run_conf=conf)
    assert second.state == DagRunState.SUCCESS
    _, retrained = xcom(second, "train_model")
    _, kept = xcom(second, "evaluate_and_promote")
    assert retrained["model_version"] != trained["model_version"]
    assert kept["promoted"] is False and kept["outcome"] == "kept"
    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    champion = mlflow.MlflowClient().get_model_version_by_alias(
        settings.registered_model_name, CHAMPION_ALIAS
    )
    assert str(champion.version) == trained["model_version"], "@champion did not move"
    assert link.resolve().name == trained["export_version"]
