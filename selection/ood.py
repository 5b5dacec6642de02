"""Out-of-distribution scores of a checkpoint on logged real observations (VSDR-style).

VSDR ("Validate on Sim, Detect on Real") ranks policies by combining their success in
simulation with how far a fixed set of real observations lies outside the distribution
each policy was exercised on. This module computes the second part: for one checkpoint,
an :class:`OODReference` is fitted on *reference* observations (the checkpoint's own sim
rollouts, :func:`collect_reference_obs`) and :func:`score` measures how unusual *target*
observations (real data) are for that checkpoint.

Observations are dicts of arrays keyed by the policy's ``spec.obs_keys``, stacked over
the leading axis ``(N, *shape)``. An optional ``"episode_index"`` int array ``(N,)``
(:data:`EPISODE_KEY`) tells which episode each row belongs to; rows of one episode must be
consecutive time steps in order. Without it all rows are treated as one episode. It is
used for the observation history of chunked policies, for the chunk self-consistency
detector and to split the reference into calibration folds by episode.
:func:`stack_episodes` builds such a dict from per-episode dicts (e.g.
``RealEpisode.obs``).

Feature-space detectors (on the policy's penultimate embedding ``features_tensors``)
---------------------------------------------------------------------------------
The embedding is standardised with the reference's per-column mean and std; columns whose
reference std is ``<= 1e-6 * (1 + |mean|)`` (dead ReLUs, saturated or constant units) are
dropped (a target's values in such a column are ignored). Then, per detector (higher score
= more out of distribution):

* ``mahalanobis``: Mahalanobis distance to the reference mean under the Ledoit-Wolf
  shrunk covariance (``sklearn.covariance.LedoitWolf``);
* ``knn``: mean Euclidean distance to the ``knn_k`` nearest reference embeddings
  (``sklearn.neighbors.NearestNeighbors``);
* ``iforest``: ``-score_samples`` of an ``IsolationForest``;
* ``lof``: ``-score_samples`` of a ``LocalOutlierFactor(novelty=True)`` (the negated
  local outlier factor);
* ``gmm``: negative log-likelihood under a ``GaussianMixture`` (``gmm_covariance``,
  diagonal by default: well conditioned for 256-d embeddings and a few hundred samples)
  whose number of components is chosen by BIC among ``gmm_components``.

Output-space detector (one per policy, :attr:`OODScores.methods` says which)
--------------------------------------------------------------------------
* discrete policies, ``entropy``: entropy (nats) of the softmax over ``action_logits``;
* Gaussian policies, ``action_spread``: the built-in heads have a state-independent
  ``log_std``, so the predicted std carries no information and is not used. Instead the
  spread of the predicted mean action (in the head's normalized units): with MC dropout
  (``output_samples`` passes with only the dropout modules in train mode) when the model
  has dropout layers, else under input-noise perturbation (``output_samples`` copies of
  each observation plus Gaussian noise of ``input_noise_scale`` x the reference's
  per-channel std of that observation; zero-variance channels get no noise). The score is
  the per-dimension std over the samples, averaged over action dimensions;
* chunked policies with ``predict_action_chunk`` (diffusion), ``chunk_consistency``:
  deterministic chunks (fixed initial noise) are predicted at consecutive steps ``t`` and
  ``t + 1`` of an episode; the score of step ``t`` is the L2 disagreement (normalized action
  units, mean over the overlapping steps) between the actions the chunk of ``t`` plans for
  times ``t + 1 ..`` and the actions the chunk of ``t + 1`` plans for the same times.
  Only steps with a successor in the same episode are scored.

Calibration (why the numbers are comparable across checkpoints)
----------------------------------------------------------------
Raw scores live in each checkpoint's own embedding space and units, so they are only
compared with the same checkpoint's reference scores (K-fold split-conformal calibration).
The reference is split into ``calibration_folds`` (K = 5) folds, by episode when there are
at least K episodes (and every training split keeps enough rows), else by row. For each
fold ``f`` a detector ``D_f`` is fitted on the other folds and scores both the held-out
fold (``r_f``) and every target (``s_f``); an in-distribution target is then exchangeable
with the held-out fold (a k-NN would find a reference point it was fitted on at distance
0, and a detector fitted on all n points scores fresh points lower than one fitted on
0.8 n: both would bias the fraction). The statistics below are computed per fold and
averaged over the folds (the output-space detector has nothing fitted: one "fold", all
reference scores). With ``q = quantile`` (0.95):

* ``frac_ood`` = fraction of targets with ``s_f > quantile(r_f, q)``: about ``1 - q``
  (0.05) for in-distribution targets, 1 when every target is beyond the reference's 95th
  percentile; in [0, 1];
* ``mean_norm`` = ``(mean(s_f) - median(r_f)) / (quantile(r_f, q) - median(r_f))``: 0 at
  the reference median, 1 when the average target is as unusual as the reference's 95th
  percentile (the spread is floored at ``1e-12 * (1 + |median|)`` for constant scores);
* ``mean_rank`` = mean over targets of the empirical CDF of ``r_f`` at ``s_f`` (mid-rank for
  ties): about 0.5 in distribution, 1 when every target is beyond every reference score,
  0 when below every one (e.g. a more confident policy: lower entropy);
* ``mean_score`` (fold-averaged mean target score), ``ref_mean``, ``ref_median``,
  ``ref_quantile`` (of the pooled out-of-fold reference scores): raw values, for
  inspection only; output-space detectors add ``ratio = mean_score / ref_mean``.

Per-observation target scores (:attr:`OODScores.per_observation`) are the fold-averaged
raw scores.

``combined`` = the mean of ``frac_ood`` over the feature-space detectors (in [0, 1],
about 0.05 in distribution). The output-space detector is reported but not part of it.

Caching
-------
With ``cache_dir``, a reference is stored as ``ood-ref-<key>.npz`` (embeddings, fold ids,
output-space reference scores, noise scales; read with ``allow_pickle=False``) plus ``.json``
(metadata) keyed by the checkpoint key (default: a digest of the policy's class, config,
spec and weights), a digest of the reference observations and the detector config.
Nothing is pickled: loading refits the (deterministic, ``random_state``) detectors on the
stored embeddings, which gives identical scores. A changed reference, config or checkpoint
gives another key; an unreadable or inconsistent cache entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

EPISODE_KEY = "episode_index"
FEATURE_DETECTORS: tuple[str, ...] = ("mahalanobis", "knn", "iforest", "lof", "gmm")
OUTPUT_DETECTORS: tuple[str, ...] = ("entropy", "action_spread", "chunk_consistency")
CACHE_FORMAT = "twinrank-ood-reference"
CACHE_FORMAT_VERSION = 1
#: BLAS threads while fitting/scoring the sklearn detectors (None: leave the process setting).
#: The matrices are small (<= a few hundred columns), where threaded BLAS is mostly overhead
#: and, on a loaded machine, up to 100x slower (e.g. LedoitWolf's eigh).
BLAS_THREADS: int | None = 1

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EPISODE_KEY",
    "FEATURE_DETECTORS",
    "OODConfig",
    "OODError",
    "OODReference",
    "OODScores",
    "OUTPUT_DETECTORS",
    "build_reference",
    "collect_reference_obs",
    "data_digest",
    "ood_scores_for_checkpoint",
    "policy_digest",
    "score",
    "stack_episodes",
]


class OODError(ValueError):
    """Observations, a policy or a config that OOD scoring cannot work with."""


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OODConfig:
    """Detector settings; part of the cache key.

    ``detectors``: feature-space detectors to run (subset of :data:`FEATURE_DETECTORS`).
    ``quantile``: reference quantile of the calibrated fraction (``frac_ood``).
    ``calibration_folds``: folds of the cross-fitted reference scores.
    ``min_reference``: fewest reference observations accepted.
    ``output_detector``: also run the output-space detector of the policy.
    ``output_samples`` / ``input_noise_scale``: MC-dropout or input-noise samples per
    observation and the noise std as a fraction of the reference's per-channel std.
    """

    detectors: tuple[str, ...] = FEATURE_DETECTORS
    quantile: float = 0.95
    calibration_folds: int = 5
    min_reference: int = 50
    knn_k: int = 5
    lof_neighbors: int = 20
    iforest_estimators: int = 100
    gmm_components: tuple[int, ...] = (1, 2, 4)
    gmm_covariance: str = "diag"
    gmm_reg_covar: float = 1e-4
    output_detector: bool = True
    output_samples: int = 16
    input_noise_scale: float = 0.1
    random_state: int = 0
    batch_size: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "detectors", tuple(self.detectors))
        object.__setattr__(self, "gmm_components", tuple(int(c) for c in self.gmm_components))
        unknown = [d for d in self.detectors if d not in FEATURE_DETECTORS]
        if unknown or not self.detectors:
            raise OODError(
                f"OODConfig.detectors = {self.detectors!r}: choose a non-empty subset of {list(FEATURE_DETECTORS)}"
            )
        if not 0.5 <= float(self.quantile) < 1.0:
            raise OODError(f"OODConfig.quantile = {self.quantile!r}; use a value in [0.5, 1), e.g. 0.95")
        for name, lo in (
            ("calibration_folds", 2),
            ("min_reference", 10),
            ("knn_k", 1),
            ("lof_neighbors", 2),
            ("iforest_estimators", 1),
            ("output_samples", 2),
            ("batch_size", 1),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise OODError(f"OODConfig.{name} = {v!r}; expected an int >= {lo}")
        if not self.gmm_components or any(c < 1 for c in self.gmm_components):
            raise OODError(
                f"OODConfig.gmm_components = {self.gmm_components!r}; expected positive ints, e.g. (1, 2, 4)"
            )
        if self.gmm_covariance not in ("full", "tied", "diag", "spherical"):
            raise OODError(
                f"OODConfig.gmm_covariance = {self.gmm_covariance!r}; use 'diag', 'full', 'tied' or 'spherical'"
            )
        if not self.gmm_reg_covar > 0 or not self.input_noise_scale > 0:
            raise OODError("OODConfig.gmm_reg_covar and input_noise_scale must be > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["detectors"] = list(self.detectors)
        d["gmm_components"] = list(self.gmm_components)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OODConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise OODError(f"OODConfig: unknown field(s) {unknown}; accepted: {sorted(names)}")
        kw = dict(d)
        for k in ("detectors", "gmm_components"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# ---------------------------------------------------------------------------------------------
# digests and observation handling
# ---------------------------------------------------------------------------------------------


def policy_digest(policy: Any) -> str:
    """sha256 of a torch policy's class name, config, spec and ``state_dict`` tensors."""
    from policies.interface import config_to_dict

    h = hashlib.sha256()
    meta = {
        "class": getattr(policy, "policy_name", "") or type(policy).__name__,
        "config": config_to_dict(getattr(policy, "config", None)) if hasattr(policy, "config") else {},
        "spec": policy.spec.to_dict(),
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, t in sorted(policy.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def data_digest(obs: Mapping[str, Any], keys: Sequence[str]) -> str:
    """sha256 of the arrays ``obs[k]`` for ``keys`` (+ the episode index when present)."""
    h = hashlib.sha256()
    for k in [*sorted(keys), *([EPISODE_KEY] if EPISODE_KEY in obs else [])]:
        a = np.ascontiguousarray(np.asarray(obs[k]))
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stack_episodes(episodes: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Concatenate per-episode observation dicts ``{key: (T_i, *shape)}`` and add
    ``"episode_index"`` (0, 1, ... per episode). ``keys`` default: those of the first episode."""
    if not episodes:
        raise OODError("stack_episodes: no episodes given")
    keys = list(keys) if keys is not None else [k for k in episodes[0] if k != EPISODE_KEY]
    out: dict[str, np.ndarray] = {}
    for k in keys:
        missing = [i for i, e in enumerate(episodes) if k not in e]
        if missing:
            raise OODError(f"stack_episodes: episodes {missing[:5]} have no observation {k!r}")
        out[k] = np.concatenate([np.asarray(e[k]) for e in episodes], axis=0)
    lengths = [len(np.asarray(e[keys[0]])) for e in episodes]
    out[EPISODE_KEY] = np.repeat(np.arange(len(episodes), dtype=np.int64), lengths)
    return out


def _check_obs(policy: Any, obs: Mapping[str, Any], what: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The policy's observation arrays (validated) and the per-row episode index."""
    if not isinstance(obs, Mapping):
        raise OODError(
            f"{what} observations must be a dict of arrays keyed by {policy.spec.obs_keys}, got {type(obs).__name__}"
        )
    arrays: dict[str, np.ndarray] = {}
    n: int | None = None
    for o in policy.spec.observations:
        if o.key not in obs:
            raise OODError(
                f"{what} observations have no {o.key!r} (the policy reads {policy.spec.obs_keys}; got {sorted(obs)})"
            )
        a = np.asarray(obs[o.key])
        if a.ndim != len(o.shape) + 1 or tuple(a.shape[1:]) != tuple(o.shape):
            raise OODError(
                f"{what} observation {o.key!r} has shape {a.shape}; expected (N, *{tuple(o.shape)}) "
                f"stacked over the leading axis"
            )
        if n is not None and a.shape[0] != n:
            raise OODError(f"{what} observation {o.key!r} has {a.shape[0]} rows, others have {n}")
        n = a.shape[0]
        if np.issubdtype(a.dtype, np.floating):
            bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
            if bad.any():
                raise OODError(
                    f"{what} observation {o.key!r} has non-finite values in {int(bad.sum())} rows "
                    f"(first: {int(np.flatnonzero(bad)[0])}); drop or repair those rows"
                )
        arrays[o.key] = a
    assert n is not None
    if EPISODE_KEY in obs:
        ep = np.asarray(obs[EPISODE_KEY])
        if ep.shape != (n,) or not np.issubdtype(ep.dtype, np.integer):
            raise OODError(f"{what} {EPISODE_KEY!r} must be an int array of shape ({n},), got {ep.dtype} {ep.shape}")
        starts = np.r_[True, ep[1:] != ep[:-1]]
        if len(np.unique(ep)) != int(starts.sum()):
            raise OODError(
                f"{what} {EPISODE_KEY!r}: the rows of each episode must be consecutive (an episode "
                f"appears in several blocks); sort the rows by episode then time"
            )
    else:
        ep = np.zeros(n, dtype=np.int64)
    return arrays, ep.astype(np.int64)


def _histories(x: np.ndarray, episode: np.ndarray, n_steps: int) -> np.ndarray:
    """``(N, *shape)`` -> ``(N, n_steps, *shape)``: the last ``n_steps`` rows of each row's
    episode, padded at the episode start by repeating its first row."""
    n = x.shape[0]
    idx = np.arange(n)
    starts = np.r_[True, episode[1:] != episode[:-1]]
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    cols = [np.maximum(idx - (n_steps - 1 - j), first) for j in range(n_steps)]
    return x[np.stack(cols, axis=1)]


def _model_inputs(policy: Any, arrays: dict[str, np.ndarray], episode: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs as the model sees them: histories ``(N, n_obs_steps, ...)`` for policies with an
    observation history, else the arrays themselves."""
    n_steps = int(getattr(policy, "n_obs_steps", 1))
    if n_steps <= 1:
        return arrays
    return {k: _histories(v, episode, n_steps) for k, v in arrays.items()}


@contextmanager
def _eval_mode(policy: Any) -> Iterator[None]:
    """Run with ``policy`` in eval mode; restores its train/eval mode afterwards."""
    was_training = bool(getattr(policy, "training", False))
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        yield
    finally:
        if hasattr(policy, "train"):
            policy.train(was_training)


def _batches(inputs: dict[str, np.ndarray], batch_size: int):
    n = next(iter(inputs.values())).shape[0]
    for i in range(0, n, batch_size):
        yield {k: v[i : i + batch_size] for k, v in inputs.items()}


def _embed(policy: Any, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Penultimate embedding ``(N, F)`` float32 (``policy.features_tensors``)."""
    if not hasattr(policy, "features_tensors") or not hasattr(policy, "_as_tensor_batch"):
        raise OODError(
            f"{type(policy).__name__} has no penultimate embedding (features_tensors); feature-space "
            f"OOD needs a torch policy from policies (MLP, point cloud, diffusion)"
        )
    out = []
    with torch.no_grad():
        for b in _batches(inputs, batch_size):
            try:
                f = policy.features_tensors(policy._as_tensor_batch(b))
            except NotImplementedError as exc:
                raise OODError(
                    f"{type(policy).__name__} does not implement features_tensors(); feature-space OOD "
                    f"needs a penultimate embedding"
                ) from exc
            out.append(f.reshape(f.shape[0], -1).float().cpu().numpy())
    emb = np.concatenate(out, axis=0).astype(np.float32)
    if not np.isfinite(emb).all():
        raise OODError("the policy's embedding has non-finite values; check the checkpoint's normalizer statistics")
    return emb


# ---------------------------------------------------------------------------------------------
# feature-space detectors
# ---------------------------------------------------------------------------------------------

Scorer = Callable[[np.ndarray], np.ndarray]


def _blas_limit() -> Any:
    """Context manager limiting BLAS threads to :data:`BLAS_THREADS` (no-op when None)."""
    from contextlib import nullcontext

    if BLAS_THREADS is None:
        return nullcontext()
    # load every BLAS the detectors use first: threadpoolctl only limits loaded libraries
    import scipy.linalg  # noqa: F401
    import sklearn.covariance  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.mixture  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=BLAS_THREADS, user_api="blas")


def _fit_detector(name: str, z: np.ndarray, cfg: OODConfig) -> tuple[Scorer, dict[str, Any]]:
    """Fit detector ``name`` on standardized embeddings ``z``; returns (scorer, info)."""
    n = z.shape[0]
    if name == "mahalanobis":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(z)
        return (lambda x: np.sqrt(np.maximum(lw.mahalanobis(x), 0.0))), {"shrinkage": float(lw.shrinkage_)}
    if name == "knn":
        from sklearn.neighbors import NearestNeighbors

        k = min(cfg.knn_k, n)
        nn_ = NearestNeighbors(n_neighbors=k).fit(z)
        return (lambda x: nn_.kneighbors(x, n_neighbors=k)[0].mean(axis=1)), {"k": k}
    if name == "iforest":
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=cfg.iforest_estimators, random_state=cfg.random_state).fit(z)
        return (lambda x: -forest.score_samples(x)), {}
    if name == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        k = min(cfg.lof_neighbors, n - 1)
        lof = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(z)
        return (lambda x: -lof.score_samples(x)), {"n_neighbors": k}
    if name == "gmm":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        best: Any = None
        best_bic = np.inf
        for c in sorted({c for c in cfg.gmm_components if c <= n // 2} or {1}):
            gm = GaussianMixture(
                n_components=c,
                covariance_type=cfg.gmm_covariance,
                reg_covar=cfg.gmm_reg_covar,
                max_iter=200,
                random_state=cfg.random_state,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm.fit(z)
            bic = gm.bic(z)
            if bic < best_bic:
                best, best_bic = gm, bic
        return (lambda x: -best.score_samples(x)), {"n_components": int(best.n_components)}
    raise OODError(f"unknown detector {name!r}; choose from {list(FEATURE_DETECTORS)}")


def _fold_ids(n: int, episode: np.ndarray, k: int, seed: int, min_train: int) -> np.ndarray:
    """Fold of each row: whole episodes per fold when there are >= k episodes (and every
    training split keeps >= ``min_train`` rows), else rows shuffled into k folds."""
    rng = np.random.default_rng(seed)
    eps = np.unique(episode)
    if len(eps) >= k:
        order = rng.permutation(len(eps))
        ep_fold = np.empty(len(eps), dtype=np.int64)
        ep_fold[order] = np.arange(len(eps)) % k
        folds = ep_fold[np.searchsorted(eps, episode)]
        if all((folds != f).sum() >= min_train for f in range(k)):
            return folds
    folds = np.empty(n, dtype=np.int64)
    folds[rng.permutation(n)] = np.arange(n) % k
    return folds


def _fit_folds(
    name: str, z: np.ndarray, folds: np.ndarray, cfg: OODConfig
) -> tuple[list[Scorer], np.ndarray, list[dict[str, Any]]]:
    """One detector per fold, fitted on the other folds; returns (scorers by fold,
    out-of-fold reference scores ``(n_ref,)``, info by fold)."""
    scorers: list[Scorer] = []
    infos: list[dict[str, Any]] = []
    oof = np.empty(z.shape[0], dtype=np.float64)
    for f in range(int(folds.max()) + 1):
        held = folds == f
        scorer, info = _fit_detector(name, z[~held], cfg)
        oof[held] = scorer(z[held])
        scorers.append(scorer)
        infos.append(info)
    return scorers, oof, infos


@dataclass
class _Standardizer:
    mean: np.ndarray
    std: np.ndarray
    keep: np.ndarray

    @classmethod
    def fit(cls, emb: np.ndarray) -> _Standardizer:
        e = emb.astype(np.float64)
        mean, std = e.mean(axis=0), e.std(axis=0)
        keep = std > 1e-6 * (1.0 + np.abs(mean))
        if not keep.any():
            raise OODError(
                f"all {emb.shape[1]} embedding features are constant on the reference observations "
                f"(identical observations, or a degenerate policy); collect reference rollouts with "
                f"more varied states (more seeds)"
            )
        return cls(mean=mean, std=np.where(keep, std, 1.0), keep=keep)

    def transform(self, emb: np.ndarray) -> np.ndarray:
        return ((emb.astype(np.float64) - self.mean) / self.std)[:, self.keep]


# ---------------------------------------------------------------------------------------------
# output-space detectors
# ---------------------------------------------------------------------------------------------


def _has_dropout(policy: Any) -> bool:
    return isinstance(policy, nn.Module) and any(isinstance(m, nn.modules.dropout._DropoutNd) for m in policy.modules())


def _output_kind(policy: Any) -> tuple[str | None, str]:
    """(detector name, method description) of the policy's output-space detector."""
    if getattr(policy, "chunked", False):
        if hasattr(policy, "predict_action_chunk"):
            return "chunk_consistency", (
                "L2 disagreement (normalized action units) between the deterministic chunks "
                "planned at consecutive steps, over the future times they share"
            )
        return None, "unavailable: chunked policy without predict_action_chunk"
    if not hasattr(policy, "action_logits"):
        return None, f"unavailable: {type(policy).__name__} has no action_logits"
    if policy.spec.action.discrete:
        return "entropy", "entropy (nats) of the softmax over the action logits"
    if _has_dropout(policy):
        return "action_spread", "mc_dropout: std of the predicted mean action over dropout samples"
    return "action_spread", (
        "input_noise: std of the predicted mean action under Gaussian input noise "
        "(input_noise_scale x reference per-channel std); the model has no dropout and its "
        "predicted std is state-independent"
    )


def _noise_std(arrays: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """Per-key noise std: ``scale`` x the per-channel (last axis) std of float observations."""
    out = {}
    for k, a in arrays.items():
        if np.issubdtype(a.dtype, np.floating):
            ch = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)
            out[k] = (scale * ch.astype(np.float64).std(axis=0)).astype(np.float32)
    return out


def _entropy_scores(policy: Any, inputs: dict[str, np.ndarray], cfg: OODConfig) -> np.ndarray:
    out = []
    with torch.no_grad():
        for b in _batches(inputs, cfg.batch_size):
            logp = torch.log_softmax(policy.action_logits(b).double(), dim=-1)
            out.append((-(logp.exp() * logp).sum(-1)).cpu().numpy())
    return np.concatenate(out)


def _spread_scores(
    policy: Any, inputs: dict[str, np.ndarray], noise_std: dict[str, np.ndarray], cfg: OODConfig
) -> np.ndarray:
    k = cfg.output_samples
    mc = _has_dropout(policy)
    gen = torch.Generator().manual_seed(cfg.random_state)
    out = []
    was_training = policy.training
    try:
        policy.eval()
        if mc:
            for m in policy.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.random_state)
            for b in _batches(inputs, max(1, cfg.batch_size // k)):
                t = policy._as_tensor_batch(b)
                nb = next(iter(t.values())).shape[0]
                rep = {key: v.repeat_interleave(k, dim=0) for key, v in t.items()}
                if not mc:
                    for key, std in noise_std.items():
                        if key in rep and rep[key].is_floating_point():
                            s = torch.as_tensor(std, dtype=rep[key].dtype, device=rep[key].device)
                            noise = torch.randn(rep[key].shape, generator=gen).to(rep[key].device)
                            rep[key] = rep[key] + noise * s
                mean = policy.action_logits(rep).double().reshape(nb, k, -1)
                out.append(mean.std(dim=1).mean(dim=-1).cpu().numpy())
    finally:
        policy.train(was_training)
    return np.concatenate(out)


def _chunk_scores(policy: Any, arrays: dict[str, np.ndarray], episode: np.ndarray, cfg: OODConfig) -> np.ndarray:
    """Disagreement between consecutive chunks (see the module docstring); one value per
    step that has a successor in its episode."""
    key = getattr(getattr(policy, "config", None), "obs_key", policy.spec.obs_keys[0])
    n_obs = int(policy.n_obs_steps)
    horizon = int(policy.horizon)
    offset = int(getattr(policy, "action_offset", 1 - n_obs))
    first_future = 1 - offset  # chunk index of time t + 1
    if horizon - first_future < 1:
        raise OODError(
            f"chunk_consistency: the chunk (horizon {horizon}, offset {offset}) plans no time after the "
            f"next step; disable it with OODConfig(output_detector=False)"
        )
    hist = _histories(arrays[key], episode, n_obs)
    chunks = []
    with torch.no_grad():
        for i in range(0, hist.shape[0], cfg.batch_size):
            h = torch.as_tensor(np.ascontiguousarray(hist[i : i + cfg.batch_size])).float().to(policy.torch_device)
            c = policy.predict_action_chunk(h, deterministic=True)
            if hasattr(policy, "normalize_action"):
                c = policy.normalize_action(c)
            chunks.append(c.reshape(c.shape[0], horizon, -1).double().cpu().numpy())
    ch = np.concatenate(chunks, axis=0)
    has_next = np.r_[episode[1:] == episode[:-1], False]
    t = np.flatnonzero(has_next)
    a = ch[t, first_future:]  # times t+1 .. planned at t
    b = ch[t + 1, first_future - 1 : horizon - 1]  # the same times planned at t+1
    return np.linalg.norm(a - b, axis=-1).mean(axis=-1)


def _output_scores(
    policy: Any,
    kind: str | None,
    arrays: dict[str, np.ndarray],
    episode: np.ndarray,
    noise_std: dict[str, np.ndarray],
    cfg: OODConfig,
) -> np.ndarray | None:
    if kind is None:
        return None
    inputs = _model_inputs(policy, arrays, episode)
    if kind == "entropy":
        return _entropy_scores(policy, inputs, cfg)
    if kind == "action_spread":
        return _spread_scores(policy, inputs, noise_std, cfg)
    return _chunk_scores(policy, arrays, episode, cfg)


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------


_SUMMARY_KEYS = ("frac_ood", "mean_norm", "mean_rank", "mean_score", "ref_mean", "ref_median", "ref_quantile")


def _calibrate(targets: Sequence[np.ndarray], refs: Sequence[np.ndarray], q: float, ratio: bool) -> dict[str, float]:
    """Calibrated summary (module docstring). ``targets[f]`` / ``refs[f]``: target scores and
    held-out reference scores under fold ``f``'s detector; the calibrated statistics are
    computed per fold and averaged; the raw ``ref_*`` values pool the reference scores."""
    nan = float("nan")
    if not targets or any(len(t) == 0 for t in targets) or any(len(r) == 0 for r in refs):
        return {k: nan for k in (*_SUMMARY_KEYS, *(("ratio",) if ratio else ()))}
    frac, norm, rank, mean = [], [], [], []
    for t, r in zip(targets, refs):
        r_sorted = np.sort(r)
        r_q = float(np.quantile(r, q))
        r_med = float(np.quantile(r, 0.5))
        spread = max(r_q - r_med, 1e-12 * (1.0 + abs(r_med)))
        lo = np.searchsorted(r_sorted, t, side="left")
        hi = np.searchsorted(r_sorted, t, side="right")
        frac.append(np.mean(t > r_q))
        norm.append((np.mean(t) - r_med) / spread)
        rank.append(np.mean((lo + hi) / 2.0 / len(r)))
        mean.append(np.mean(t))
    pooled = np.concatenate(list(refs))
    out = {
        "frac_ood": float(np.mean(frac)),
        "mean_norm": float(np.mean(norm)),
        "mean_rank": float(np.mean(rank)),
        "mean_score": float(np.mean(mean)),
        "ref_mean": float(np.mean(pooled)),
        "ref_median": float(np.quantile(pooled, 0.5)),
        "ref_quantile": float(np.quantile(pooled, q)),
    }
    if ratio:
        rm = out["ref_mean"]
        out["ratio"] = float(out["mean_score"] / rm) if rm > 0 else nan
    return out


# ---------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------


@dataclass
class OODReference:
    """Fitted detectors of one checkpoint on its reference observations.

    ``embeddings``: raw reference embeddings ``(n_ref, F)``; ``folds``: calibration fold of
    each reference row; ``ref_scores``: out-of-fold reference scores per feature detector
    (each row scored by the detector of its fold) and the output-space detector's
    reference scores (nothing fitted); ``detectors[name][f]``: the detector fitted on all
    folds but ``f`` (not stored on disk: refit from the embeddings); ``detector_info``:
    per fold, e.g. the BIC-chosen GMM components.
    """

    checkpoint_key: str
    policy_digest: str
    data_digest: str
    cache_key: str
    config: OODConfig
    n_ref: int
    n_episodes: int
    embeddings: np.ndarray
    folds: np.ndarray
    ref_scores: dict[str, np.ndarray]
    noise_std: dict[str, np.ndarray]
    output_kind: str | None
    output_method: str
    standardizer: _Standardizer = field(repr=False)
    detectors: dict[str, list[Scorer]] = field(default_factory=dict, repr=False)
    detector_info: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    from_cache: bool = False
    cache_path: str | None = None

    @property
    def feature_dim(self) -> int:
        """Embedding columns used (after dropping constant ones)."""
        return int(self.standardizer.keep.sum())


def _cache_key(checkpoint_key: str, ddigest: str, cfg: OODConfig) -> str:
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "version": CACHE_FORMAT_VERSION,
            "checkpoint": checkpoint_key,
            "data": ddigest,
            "config": cfg.to_dict(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_paths(cache_dir: str | os.PathLike[str], key: str) -> tuple[Path, Path]:
    d = Path(cache_dir)
    return d / f"ood-ref-{key[:32]}.npz", d / f"ood-ref-{key[:32]}.json"


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fit_reference(ref: OODReference) -> OODReference:
    """Fit the per-fold detectors and the out-of-fold reference scores (build and cache load)."""
    z = ref.standardizer.transform(ref.embeddings)
    with _blas_limit():
        for name in ref.config.detectors:
            scorers, oof, infos = _fit_folds(name, z, ref.folds, ref.config)
            ref.detectors[name] = scorers
            ref.ref_scores[name] = oof
            ref.detector_info[name] = infos
    return ref


def _save_cache(ref: OODReference, npz_path: Path, json_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {"embeddings": ref.embeddings, "folds": ref.folds}
    if ref.output_kind is not None:
        arrays["output_ref_scores"] = ref.ref_scores[ref.output_kind]
    for k, v in ref.noise_std.items():
        arrays[f"noise__{k}"] = v
    meta = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "cache_key": ref.cache_key,
        "checkpoint_key": ref.checkpoint_key,
        "policy_digest": ref.policy_digest,
        "data_digest": ref.data_digest,
        "config": ref.config.to_dict(),
        "n_ref": ref.n_ref,
        "n_episodes": ref.n_episodes,
        "output_kind": ref.output_kind,
        "output_method": ref.output_method,
        "noise_keys": sorted(ref.noise_std),
    }
    _atomic_write(npz_path, lambda f: np.savez(f, **arrays), "wb")
    _atomic_write(json_path, lambda f: f.write(json.dumps(meta, indent=2)), "w")


def _load_cache(npz_path: Path, json_path: Path, key: str, pdigest: str) -> OODReference | None:
    """The cached reference, or None when missing, unreadable or not for this key/policy."""
    if not npz_path.is_file() or not json_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text())
        if (
            meta.get("format") != CACHE_FORMAT
            or meta.get("format_version") != CACHE_FORMAT_VERSION
            or meta.get("cache_key") != key
            or meta.get("policy_digest") != pdigest
        ):
            return None
        cfg = OODConfig.from_dict(meta["config"])
        kind = meta["output_kind"]
        with np.load(npz_path, allow_pickle=False) as z:
            emb = np.array(z["embeddings"])
            folds = np.array(z["folds"]).astype(np.int64)
            scores = {kind: np.array(z["output_ref_scores"])} if kind is not None else {}
            noise = {k: np.array(z[f"noise__{k}"]) for k in meta["noise_keys"]}
        n = int(meta["n_ref"])
        k = cfg.calibration_folds
        if (
            emb.ndim != 2
            or emb.shape[0] != n
            or folds.shape != (n,)
            or not np.array_equal(np.unique(folds), np.arange(k))
        ):
            return None
        ref = OODReference(
            checkpoint_key=meta["checkpoint_key"],
            policy_digest=pdigest,
            data_digest=meta["data_digest"],
            cache_key=key,
            config=cfg,
            n_ref=n,
            n_episodes=int(meta["n_episodes"]),
            embeddings=emb,
            folds=folds,
            ref_scores=scores,
            noise_std=noise,
            output_kind=kind,
            output_method=meta["output_method"],
            standardizer=_Standardizer.fit(emb),
            from_cache=True,
            cache_path=str(npz_path),
        )
        return _fit_reference(ref)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        warnings.warn(f"ignoring unreadable OOD reference cache {npz_path} ({exc}); rebuilding it", stacklevel=3)
        return None


def build_reference(
    policy: Any,
    obs: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint_key: str | None = None,
    config: OODConfig | None = None,
) -> OODReference:
    """Fit the OOD detectors of ``policy`` on reference observations ``obs`` (its sim rollouts).

    ``obs``: ``{key: (N, *shape)}`` for the policy's ``spec.obs_keys`` (+ optional
    ``"episode_index"``). ``checkpoint_key``: names the checkpoint in the cache key (default:
    :func:`policy_digest`). With ``cache_dir`` the reference is loaded from / stored to the
    cache (see the module docstring). Raises :class:`OODError` with fewer than
    ``config.min_reference`` observations.
    """
    cfg = config or OODConfig()
    arrays, episode = _check_obs(policy, obs, "reference")
    n = next(iter(arrays.values())).shape[0]
    if n < cfg.min_reference:
        raise OODError(
            f"OOD reference needs at least {cfg.min_reference} observations (OODConfig.min_reference), "
            f"got {n}; collect more sim rollouts (collect_reference_obs with more seeds)"
        )
    pdigest = policy_digest(policy)
    ckey = checkpoint_key or f"policy:{pdigest}"
    ddigest = data_digest({**arrays, **({EPISODE_KEY: obs[EPISODE_KEY]} if EPISODE_KEY in obs else {})}, list(arrays))
    key = _cache_key(ckey, ddigest, cfg)
    npz_path = json_path = None
    if cache_dir is not None:
        npz_path, json_path = _cache_paths(cache_dir, key)
        cached = _load_cache(npz_path, json_path, key, pdigest)
        if cached is not None:
            return cached

    with _eval_mode(policy):
        emb = _embed(policy, _model_inputs(policy, arrays, episode), cfg.batch_size)
    std = _Standardizer.fit(emb)
    min_train = max(cfg.knn_k, cfg.lof_neighbors, max(cfg.gmm_components)) + 1
    folds = _fold_ids(n, episode, cfg.calibration_folds, cfg.random_state, min_train)
    noise = _noise_std(arrays, cfg.input_noise_scale)
    kind, method = _output_kind(policy) if cfg.output_detector else (None, "disabled (OODConfig.output_detector)")
    ref_scores: dict[str, np.ndarray] = {}
    with _eval_mode(policy):
        out_scores = _output_scores(policy, kind, arrays, episode, noise, cfg)
    if kind is not None and out_scores is not None:
        ref_scores[kind] = out_scores
    ref = OODReference(
        checkpoint_key=ckey,
        policy_digest=pdigest,
        data_digest=ddigest,
        cache_key=key,
        config=cfg,
        n_ref=n,
        n_episodes=int(len(np.unique(episode))),
        embeddings=emb,
        folds=folds,
        ref_scores=ref_scores,
        noise_std=noise,
        output_kind=kind,
        output_method=method,
        standardizer=std,
    )
    _fit_reference(ref)
    if npz_path is not None and json_path is not None:
        _save_cache(ref, npz_path, json_path)
        ref.cache_path = str(npz_path)
    return ref


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class OODScores:
    """OOD scores of target observations for one checkpoint.

    ``summary[detector]``: the calibrated summary (``frac_ood``, ``mean_norm``,
    ``mean_rank``, raw means and reference quantiles; see the module docstring).
    ``combined``: mean ``frac_ood`` over the feature-space detectors. ``methods``: what
    each detector computed. ``per_observation[detector]``: raw target scores (one per
    target row; for ``chunk_consistency`` one per row with a successor in its episode).
    """

    summary: dict[str, dict[str, float]]
    combined: float
    n_ref: int
    n_target: int
    quantile: float
    methods: dict[str, str]
    checkpoint_key: str = ""
    per_observation: dict[str, np.ndarray] | None = None

    def flat(self) -> dict[str, float]:
        """``{"combined": ..., "<detector>.<stat>": ...}`` (for tables and CSV)."""
        out = {"combined": self.combined}
        for det, stats in self.summary.items():
            for k, v in stats.items():
                out[f"{det}.{k}"] = v
        return out

    def to_dict(self, include_per_observation: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "checkpoint_key": self.checkpoint_key,
            "combined": self.combined,
            "n_ref": self.n_ref,
            "n_target": self.n_target,
            "quantile": self.quantile,
            "summary": self.summary,
            "methods": self.methods,
        }
        if include_per_observation and self.per_observation is not None:
            d["per_observation"] = {k: v.tolist() for k, v in self.per_observation.items()}
        return d


_FEATURE_METHODS = {
    "mahalanobis": "Mahalanobis distance, Ledoit-Wolf covariance, standardized penultimate embedding",
    "knn": "mean distance to the k nearest reference embeddings",
    "iforest": "negated IsolationForest score_samples",
    "lof": "negated LocalOutlierFactor(novelty=True) score_samples",
    "gmm": "GaussianMixture negative log-likelihood, components by BIC",
}


def score(
    policy: Any, reference: OODReference, target_obs: Mapping[str, Any], per_observation: bool = True
) -> OODScores:
    """Score ``target_obs`` (e.g. real observations) against ``reference`` for ``policy``.

    ``policy`` must be the one the reference was built for (checked by weight digest).
    """
    pdigest = policy_digest(policy)
    if pdigest != reference.policy_digest:
        raise OODError(
            "this OOD reference was built for a different policy (weights/config digest differs); "
            "call build_reference(policy, reference_obs) for this checkpoint"
        )
    cfg = reference.config
    arrays, episode = _check_obs(policy, target_obs, "target")
    n = next(iter(arrays.values())).shape[0]
    if n < 1:
        raise OODError("target observations are empty; give at least one observation")
    with _eval_mode(policy):
        emb = _embed(policy, _model_inputs(policy, arrays, episode), cfg.batch_size)
    z = reference.standardizer.transform(emb)
    summary: dict[str, dict[str, float]] = {}
    per_obs: dict[str, np.ndarray] = {}
    methods: dict[str, str] = {}
    for name in cfg.detectors:
        with _blas_limit():
            by_fold = [det(z).astype(np.float64) for det in reference.detectors[name]]
        held = [reference.ref_scores[name][reference.folds == f] for f in range(len(by_fold))]
        per_obs[name] = np.mean(by_fold, axis=0)
        summary[name] = _calibrate(by_fold, held, cfg.quantile, ratio=False)
        methods[name] = _FEATURE_METHODS[name]
    kind = reference.output_kind
    if kind is not None:
        with _eval_mode(policy):
            s = _output_scores(policy, kind, arrays, episode, reference.noise_std, cfg)
        assert s is not None
        per_obs[kind] = s
        summary[kind] = _calibrate([s], [reference.ref_scores[kind]], cfg.quantile, ratio=True)
    methods["output"] = reference.output_method
    combined = float(np.mean([summary[d]["frac_ood"] for d in cfg.detectors]))
    return OODScores(
        summary=summary,
        combined=combined,
        n_ref=reference.n_ref,
        n_target=n,
        quantile=cfg.quantile,
        methods=methods,
        checkpoint_key=reference.checkpoint_key,
        per_observation=per_obs if per_observation else None,
    )


def ood_scores_for_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    reference_obs: Mapping[str, Any],
    target_obs: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None = None,
    config: OODConfig | None = None,
    device: str = "cpu",
    per_observation: bool = False,
) -> OODScores:
    """Load a checkpoint, build (or load the cached) reference and score ``target_obs``.

    The cache key names the checkpoint by the sha256 of its weights file.
    """
    from policies.checkpoint import load_checkpoint

    policy = load_checkpoint(checkpoint_dir, device=device)
    sha = policy.checkpoint_info.get("sha256", "")
    ref = build_reference(
        policy, reference_obs, cache_dir=cache_dir, checkpoint_key=f"sha256:{sha}" if sha else None, config=config
    )
    return score(policy, ref, target_obs, per_observation=per_observation)


# ---------------------------------------------------------------------------------------------
# reference observations from the twin
# ---------------------------------------------------------------------------------------------


def collect_reference_obs(
    policy: Any,
    task: str,
    seeds: Sequence[int],
    max_steps: int | None = None,
    deterministic: bool = True,
    suite: Any = None,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Roll ``policy`` out in ``TwinEnv(task, control_mode=policy.spec.action.control_mode)``,
    one episode per seed, through the rollout engine (:func:`policies.rollout.run_episodes`,
    ``batch_size`` envs at a time), and return the observations it acted on, stacked:
    ``{key: (N, *shape)}`` for ``policy.spec.obs_keys`` plus ``"episode_index"`` ``(N,)``.
    (``twinrank rank`` does not call this: its evaluation campaign records the references.)

    ``suite``: optional perturbation suite (name or object) of the env.
    """
    from evaluator.worker import observation_cfg
    from policies.rollout import RolloutHooks, run_episodes
    from twin.env import TwinEnv

    if len(seeds) == 0:
        raise OODError("collect_reference_obs: no seeds given; pass e.g. seeds=range(20)")
    keys = list(policy.spec.obs_keys)
    seeds = [int(s) for s in seeds]
    n = min(batch_size, len(seeds))
    envs = [
        TwinEnv(
            task,
            control_mode=policy.spec.action.control_mode,
            observations=observation_cfg(policy.spec),
            suite=suite,
            max_steps=max_steps,
        )
        for _ in range(n)
    ]
    per_episode: dict[int, dict[str, list[np.ndarray]]] = {}
    try:
        if hasattr(policy, "check_env"):
            policy.check_env(envs[0])
        else:
            policy.spec.check_env(envs[0])
        with _eval_mode(policy):
            for start in range(0, len(seeds), n):
                chunk = seeds[start : start + n]

                def on_obs(slot: int, obs: dict[str, np.ndarray], base: int = start) -> None:
                    rows = per_episode.setdefault(base + slot, {k: [] for k in keys})
                    for k in keys:
                        rows[k].append(np.asarray(obs[k]).copy())

                run_episodes(
                    policy,
                    {j: envs[j] for j in range(len(chunk))},
                    {j: (s, None) for j, s in enumerate(chunk)},
                    spec=policy.spec,
                    batch_size=len(chunk),
                    deterministic=deterministic,
                    hooks=RolloutHooks(on_obs=on_obs),
                )
    finally:
        policy.reset()
        for e in envs:
            e.close()
    order = sorted(per_episode)
    out = {k: np.concatenate([np.stack(per_episode[i][k]) for i in order]) for k in keys}
    out[EPISODE_KEY] = np.concatenate([np.full(len(per_episode[i][keys[0]]), i, dtype=np.int64) for i in order])
    return out
