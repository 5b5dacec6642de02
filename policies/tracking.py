"""MLflow plumbing shared by training, evaluation and selection (the lowest layer that all three import).

Where things go
    The embedded default is a local store in the working directory: run metadata in
    ``./mlflow.db`` (SQLite, needed for the model registry) and artifacts in ``./mlartifacts``.
    ``--tracking-uri`` (or ``MLFLOW_TRACKING_URI``) points anywhere else. For a SQLite store
    the artifacts always go beside the database (``<db dir>/mlartifacts``), whatever directory
    the command runs from; ``TWINRANK_ARTIFACT_ROOT`` overrides that root. A server
    (``mlflow server --backend-store-uri sqlite:///mlflow.db --artifacts-destination
    ./mlartifacts --host 127.0.0.1``) decides for itself.

Bounded waiting
    MLflow's HTTP client retries a dead server for minutes by default (7 retries, exponential
    back-off, 120 s per request). :func:`bound_http` caps every request so that one tracking
    call gives up within the budget (``TWINRANK_TRACKING_TIMEOUT`` seconds, default 15;
    the CLI's ``--tracking-timeout``), unless the user set MLflow's own
    ``MLFLOW_HTTP_REQUEST_*`` variables. :func:`wait_for_server` probes a server before a
    batch of calls and reports what it is waiting for.

Code version
    :func:`code_version` is the git commit of the source tree (``+dirty`` with local
    changes), else the installed package version; runs carry it as their MLflow source.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
TIMEOUT_ENV = "TWINRANK_TRACKING_TIMEOUT"
ARTIFACT_ROOT_ENV = "TWINRANK_ARTIFACT_ROOT"
DEFAULT_TIMEOUT_S = 15.0
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer within the budget."""


class RegisteredModelNotFound(LookupError):
    """A ``models:/`` URI names a registered model, version or alias the registry does not have."""


# ---------------------------------------------------------------------------------------------
# where
# ---------------------------------------------------------------------------------------------


def default_tracking_uri(root: str | Path = ".") -> str:
    return f"sqlite:///{(Path(root) / DEFAULT_DB).resolve()}"


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_root(uri: str) -> str | None:
    """Where new experiments of a local SQLite store keep artifacts (a file URI), or None for a
    server (it decides). Beside the database unless ``TWINRANK_ARTIFACT_ROOT`` says otherwise."""
    if os.environ.get(ARTIFACT_ROOT_ENV):
        return Path(os.environ[ARTIFACT_ROOT_ENV]).expanduser().resolve().as_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None


# ---------------------------------------------------------------------------------------------
# bounded waiting
# ---------------------------------------------------------------------------------------------


def timeout_budget(timeout_s: float | None = None) -> float:
    """Seconds a tracking call may wait for the server: the argument, ``TWINRANK_TRACKING_TIMEOUT`` or 15."""
    if timeout_s is not None:
        value: Any = timeout_s
    else:
        value = os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = -1.0
    if not t > 0:
        raise ValueError(
            f"tracking timeout {value!r} is not a positive number of seconds; e.g. "
            f"--tracking-timeout 15 or {TIMEOUT_ENV}=15"
        )
    return t


def bound_http(timeout_s: float | None = None) -> float:
    """Cap MLflow's HTTP retries and timeouts so one request gives up within ``timeout_s``
    (worst case: 3 attempts of ``timeout_s / 4`` plus back-off of under ``timeout_s / 4``).
    Variables the user set (``MLFLOW_HTTP_REQUEST_*``) are kept. Returns the budget."""
    budget = timeout_budget(timeout_s)
    per_request = max(1, int(budget / 4))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(per_request))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", f"{min(1.0, budget / 40):.3f}")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.1")
    return budget


def wait_for_server(uri: str, timeout_s: float | None = None, on_wait: Callable[[str], None] | None = None) -> None:
    """Return once the tracking server at ``uri`` answers its health check; raise
    :class:`TrackingUnavailable` after the budget. Local stores return at once. ``on_wait``
    gets one line saying what is awaited (when the first probe fails)."""
    if not is_remote(uri):
        return
    budget = bound_http(timeout_s)
    deadline = time.monotonic() + budget
    url = uri.rstrip("/") + "/health"
    said = False
    last = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TrackingUnavailable(f"MLflow tracking server {uri} did not answer within {budget:.0f} s ({last})")
        try:
            with urllib.request.urlopen(url, timeout=max(0.5, min(3.0, remaining))) as resp:  # noqa: S310 - http(s) only
                if resp.status < 500:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return  # a server that answers (e.g. 404 for /health behind a proxy) is up
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = str(getattr(exc, "reason", exc))
        if not said and on_wait is not None:
            on_wait(
                f"waiting for the MLflow tracking server at {uri} ({last}); giving up in {remaining:.0f} s "
                f"(--tracking-timeout or {TIMEOUT_ENV})"
            )
            said = True
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------------------------
# client, experiments, registry
# ---------------------------------------------------------------------------------------------


def setup(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at ``tracking_uri`` (or the embedded default) and return a client whose
    HTTP calls are bounded (:func:`bound_http`)."""
    uri = resolve_tracking_uri(tracking_uri)
    if is_remote(uri):
        bound_http()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id for ``name``, created (artifacts at :func:`artifact_root`) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri))


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)


def register_checkpoint(
    client: MlflowClient, model_name: str, run_id: str, artifact_path: str, tags: dict[str, str] | None = None
) -> str:
    """Register the checkpoint logged under ``artifact_path`` of ``run_id`` as a new model
    version of ``model_name``; returns the version number."""
    ensure_registered_model(client, model_name, description="Twinrank policy checkpoints")
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags or {})
    return str(mv.version)


def get_model_version(client: MlflowClient, uri: str) -> Any:
    """The model version a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names;
    :class:`RegisteredModelNotFound` says which part is missing."""
    body = uri[len("models:/") :] if uri.startswith("models:/") else uri
    if "@" in body:
        name, alias = body.split("@", 1)
        version = None
    else:
        name, _, version = body.rpartition("/")
        alias = None
    if not name or (version is not None and not version):
        raise RegisteredModelNotFound(f"{uri}: not a model URI; use models:/NAME/VERSION or models:/NAME@ALIAS")
    where = client.tracking_uri
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            raise RegisteredModelNotFound(
                f"{uri}: registered model {name!r} not found in the MLflow registry at {where}; "
                f"check the name (train registers it) or --tracking-uri"
            ) from exc
        raise
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code) and "INVALID_PARAMETER_VALUE" not in str(
            exc.error_code
        ):
            raise
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise RegisteredModelNotFound(
            f"{uri}: registered model {name!r} has no {what} in the MLflow registry at {where}; "
            f"list its versions and aliases in the UI's Model registry"
        ) from exc


def find_model_version(
    client: MlflowClient, checkpoint_dir: str | os.PathLike[str] | None = None, checkpoint_id: str | None = None
) -> Any | None:
    """The newest registered version whose ``checkpoint_id`` tag (content hash) or
    ``checkpoint_dir`` tag (folder) matches, or None."""
    queries = []
    if checkpoint_id:
        queries.append(("checkpoint_id", checkpoint_id))
    if checkpoint_dir:
        queries.append(("checkpoint_dir", str(Path(checkpoint_dir).resolve())))
    for tag, value in queries:
        try:
            hits = list(client.search_model_versions(f"tags.{tag} = '{value}'"))
        except MlflowException:  # a store without tag search: scan
            hits = [v for v in client.search_model_versions("") if v.tags.get(tag) == value]
        if hits:
            return max(hits, key=lambda v: int(v.version))
    return None


# ---------------------------------------------------------------------------------------------
# provenance, UI
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the source tree (``<sha>+dirty`` with uncommitted changes to tracked
    files), else ``twinrank <version>`` (the checkpoint manifest's ``code_version``, as one string)."""
    from policies.checkpoint import code_version as versions

    v = versions()
    if v.get("git_commit"):
        return v["git_commit"] + ("+dirty" if v.get("git_dirty") else "")
    return f"twinrank {v.get('twinrank', 'unknown')}"


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own source tags (shown as the run's Source) for a run made by ``entry_point``."""
    version = code_version()
    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL", "twinrank.code_version": version}
    if not version.startswith("twinrank "):
        tags["mlflow.source.git.commit"] = version.split("+")[0]
        tags["mlflow.source.git.repoURL"] = str(SOURCE_ROOT)
    return tags


def ui_command(tracking_uri: str | None = None) -> str:
    """The command that opens the MLflow UI on this store (loopback only, one server worker:
    the default four die on a busy 2-core machine)."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        exe = str(mlflow_bin) if mlflow_bin.exists() else "mlflow"
        return f"{exe} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 --workers 1"
    return f"open {uri} in a browser"


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RegisteredModelNotFound",
    "TrackingUnavailable",
    "artifact_root",
    "bound_http",
    "code_version",
    "default_tracking_uri",
    "ensure_experiment",
    "ensure_registered_model",
    "find_model_version",
    "get_model_version",
    "is_remote",
    "register_checkpoint",
    "resolve_tracking_uri",
    "setup",
    "source_tags",
    "timeout_budget",
    "ui_command",
    "wait_for_server",
]
