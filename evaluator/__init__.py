"""Evaluator: every checkpoint in parallel rollouts under perturbations (paired design).

Public API::

    from evaluator import (EvalSpec, VideoCfg, load_spec, evaluate, CampaignResult, ProgressEvent,
                           resolve_checkpoint, checkpoint_id, policy_ref, LocalExecutor,
                           InlineExecutor, RayExecutor, wilson_interval, paired_drop)

``evaluate(checkpoints, spec, out_dir, executor="local", workers=None, progress=None)`` runs
``spec.episodes(task)`` (the same (condition, seed) list for every checkpoint) on persistent
worker processes, persists every episode in ``out_dir/episodes.jsonl`` as it finishes
(an interrupted campaign resumes), and writes ``eval_info.json``, ``episodes.parquet``,
``conditions.parquet``, ``success_by_condition.png`` and sample videos.
"""

from evaluator.executors import (
    Executor,
    ExecutorError,
    InlineExecutor,
    LocalExecutor,
    RayExecutor,
    default_workers,
    make_executor,
)
from evaluator.racing import RaceResult, RacingCfg, RacingError
from evaluator.results import (
    CheckpointSummary,
    EpisodeResult,
    ResultStore,
    ResultStoreError,
    paired_drop,
    rate_summary,
    wilson_interval,
)
from evaluator.run import (
    CampaignResult,
    CheckpointResolveError,
    ProgressEvent,
    checkpoint_id,
    evaluate,
    policy_ref,
    resolve_checkpoint,
)
from evaluator.spec import COMBINED, NOMINAL, EpisodeSpec, EvalSpec, EvalSpecError, VideoCfg, available_specs, load_spec
from evaluator.worker import CheckpointRef, WorkUnit

__all__ = [
    "RaceResult",
    "RacingCfg",
    "RacingError",
    "COMBINED",
    "NOMINAL",
    "CampaignResult",
    "CheckpointRef",
    "CheckpointResolveError",
    "CheckpointSummary",
    "EpisodeResult",
    "EpisodeSpec",
    "EvalSpec",
    "EvalSpecError",
    "Executor",
    "ExecutorError",
    "InlineExecutor",
    "LocalExecutor",
    "ProgressEvent",
    "RayExecutor",
    "ResultStore",
    "ResultStoreError",
    "VideoCfg",
    "WorkUnit",
    "available_specs",
    "checkpoint_id",
    "default_workers",
    "evaluate",
    "load_spec",
    "make_executor",
    "paired_drop",
    "policy_ref",
    "rate_summary",
    "resolve_checkpoint",
    "wilson_interval",
]
