"""MLflow plumbing shared by training, evaluation and selection.

The embedded default is a local store in the project directory: run metadata in
``./mlflow.db`` (SQLite, needed for the model registry) and artifacts in ``./mlartifacts``.
``--tracking-uri`` (or ``MLFLOW_TRACKING_URI``) points anywhere else, e.g. a server
started with ``mlflow server --backend-store-uri sqlite:///mlflow.db
--artifacts-destination ./mlartifacts --host 127.0.0.1``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def default_tracking_uri(root: str | Path = ".") -> str:
    return f"sqlite:///{(Path(root) / DEFAULT_DB).resolve()}"


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def setup(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at ``tracking_uri`` (or the embedded default) and return a client."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id for ``name``, created (with artifacts next to a local SQLite store) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        artifact_location = (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)


def register_checkpoint(client: MlflowClient, model_name: str, run_id: str, artifact_path: str,
                        tags: dict[str, str] | None = None) -> str:
    """Register the checkpoint logged under ``artifact_path`` of ``run_id`` as a new model
    version of ``model_name``; returns the version number."""
    ensure_registered_model(client, model_name, description="Twinrank policy checkpoints")
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags or {})
    return str(mv.version)


def ui_command(tracking_uri: str | None = None) -> str:
    """The command that opens the MLflow UI on this store (loopback only)."""
    import sys

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        exe = str(mlflow_bin) if mlflow_bin.exists() else "mlflow"
        return f"{exe} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"
