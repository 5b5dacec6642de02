"""Prediction of real success: interval coverage, width against real-only Wilson, and trials to pick the best.
For each checkpoint family cached by bench_selection and each of its two realities (the same-engine
``proxy-real (mujoco)`` and ``proxy-real (pybullet)``): give the predictor (selection/prediction.py)
k real episodes for m checkpoints and hold the others out; vary m and k; repeat over seeds.

Data (read from bench_selection's caches, nothing is trained or evaluated here): the twin's sim
columns and each reality's OOD score (``rank/ranking.csv``, ``rank_pybullet/ranking.csv``) and
each reality's ground truth (``truth*/proxy_real_outcomes.csv``). A checkpoint's *true* real
success rate is taken to be its ground-truth estimate (50 episodes per checkpoint; 20 for the
quick mug_to_sink family); the "real trials" given to the predictor are Bernoulli draws from
that rate (seeded per repetition).

Per (family, reality, m, k), over R repetitions (each: m checkpoints chosen at random, k
Bernoulli trials each, ``predict(..., PredictConfig(sim_episodes=<sim episodes per condition
of the ranking campaign>, seed=rep))``):

(a) coverage of the 90 % intervals: share of held-out checkpoints (no real trials) whose true
    rate lies in [lo, hi]; the same on the m checkpoints with trials. Target >= 0.88 held out.
    A predictor whose beliefs live only on its logit grid has lo > 0, so a true rate of exactly 0
    (a checkpoint that never succeeded in the ground truth) is never inside: a second figure
    "0ok" counts it inside when lo < 0.005 (the interval reaches 0 as printed). The real-only
    Wilson coverage on the checkpoints with trials is printed beside it.
(b) mean width (hi - lo), held out and with trials, against the real-only 90 % Wilson interval
    at k trials (z = norm.ppf(0.95)): for checkpoints with trials the Wilson interval of their
    own draws; for held-out ones the expected Wilson width had they been given k trials each
    (real-only would need those trials; the predictor spent none on them). Target >= 30 %
    narrower.
(c) trials to identify a checkpoint within eps = 0.05 of the true best at 95 % confidence:
    planner = the predictor's beliefs after the m k trials (``result.density``), then top-two
    Thompson sampling (``planning.run_sequential``, allocation "ttts"), total = m k + its
    trials; baseline = real only, flat prior, round-robin over all checkpoints ("uniform"),
    the same stopping rule. Both batch 2, capped at ``max_trials`` sequential trials (a capped
    run counts the cap, a lower bound); the wrong-choice rate (chosen checkpoint more than eps
    below the true best) is printed beside the trial counts, since the stopping rule is only
    calibrated on average over the belief. Target: uniform / planner >= 2.

Intervals on every mean: 95 % percentile bootstrap over repetitions (2000 resamples; a
repetition's checkpoints share one model fit, so they are not resampled individually); for the
ratios, both arms are resampled independently. Results go to ``bench_prediction.csv`` in each
cache folder (``bench_prediction_quick.csv`` with ``--quick``) and a run in its MLflow store
(experiment ``bench-prediction``).

Options (environment): ``TWINRANK_BENCH_PRED_REPS`` (default 40, ``--quick``/
``TWINRANK_BENCH_QUICK=1``: 8), ``TWINRANK_BENCH_PRED_PLAN_REPS`` (repetitions of (c), default
the same), ``TWINRANK_BENCH_PRED_M`` (default ``4,8,12``, capped at K - 2),
``TWINRANK_BENCH_PRED_K`` (default ``5,10,20``), ``TWINRANK_BENCH_PRED_MAX_TRIALS`` (default
3000), ``TWINRANK_BENCH_PRED_CACHES`` (comma-separated cache folders; default the reach,
box_to_shelf and quick mug_to_sink caches).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binom, norm

#: (cache folder, label, note printed beside its results)
DEFAULT_CACHES = (
    (".bench_cache/selection", "reach", ""),
    (".bench_cache/selection_box_to_shelf", "box_to_shelf", ""),
    (
        ".bench_cache/selection_mug_to_sink_quick",
        "mug_to_sink (quick)",
        "weak family from a quick run (20 reality episodes per checkpoint): its reality spread is small, "
        "so its figures say little",
    ),
)
#: (reality label, ranking folder, ground-truth folder)
REALITIES = (
    ("proxy-real (mujoco)", "rank", "truth"),
    ("proxy-real (pybullet)", "rank_pybullet", "truth_pybullet"),
)
LEVEL = 0.9
EPS = 0.05
CONFIDENCE = 0.95
BATCH = 2
BOOT = 2000
#: a true rate of 0 (1) counts as covered when lo < EDGE (hi > 1 - EDGE): see (a)
EDGE = 0.005
TARGET_COVERAGE = 0.88
TARGET_NARROWER = 0.30
TARGET_RATIO = 2.0


def _quick() -> bool:
    return os.environ.get("TWINRANK_BENCH_QUICK", "") not in ("", "0")


def _ints(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip()]


def _boot(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``values`` (one per repetition)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(BOOT, len(v)))
    bs = v[idx].mean(axis=1)
    return float(np.quantile(bs, 0.025)), float(np.quantile(bs, 0.975))


def _boot_ratio(num: np.ndarray, den: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of mean(num) / mean(den), the two resampled independently."""
    rng = np.random.default_rng(seed)
    a = np.asarray(num, dtype=float)[rng.integers(0, len(num), size=(BOOT, len(num)))].mean(axis=1)
    b = np.asarray(den, dtype=float)[rng.integers(0, len(den), size=(BOOT, len(den)))].mean(axis=1)
    r = a / np.maximum(b, 1e-12)
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def _ci(mean: float, ci: tuple[float, float], fmt: str = ".2f") -> str:
    return f"{mean:{fmt}} [{ci[0]:{fmt}},{ci[1]:{fmt}}]"


@dataclass
class Reality:
    family: str
    label: str
    ranking: pd.DataFrame
    true_p: np.ndarray
    truth_episodes: int
    sim_episodes: int | None


def _sim_episodes(root: Path) -> int | None:
    """Sim episodes per condition of the ranking campaign (campaign.json), None if unknown."""
    try:
        spec = json.loads((root / "campaign" / "campaign.json").read_text())["spec"]
        return int(spec["episodes_per_condition"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def load_reality(root: Path, family: str, label: str, rank_dir: str, truth_dir: str) -> Reality:
    ranking = pd.read_csv(root / rank_dir / "ranking.csv")
    truth = pd.read_csv(root / truth_dir / "proxy_real_outcomes.csv")
    rate = dict(zip(truth["checkpoint"].astype(str), truth["real_success"], strict=True))
    ranking["checkpoint"] = ranking["checkpoint"].astype(str)
    ranking = ranking[ranking["checkpoint"].isin(rate)].reset_index(drop=True)
    true_p = np.array([rate[c] for c in ranking["checkpoint"]], dtype=float)
    return Reality(family, label, ranking, true_p, int(truth["episodes"].min()), _sim_episodes(root))


def _wilson_width(s: int, n: int, z: float) -> float:
    from evaluator.results import wilson_interval

    lo, hi = wilson_interval(int(s), int(n), z=z)
    return hi - lo


def _expected_wilson_width(p: float, n: int, z: float) -> float:
    """E[Wilson width] at n trials of a checkpoint whose rate is p (exact over the binomial)."""
    s = np.arange(n + 1)
    return float(binom.pmf(s, n, p) @ np.array([_wilson_width(int(x), n, z) for x in s]))


def uniform_baseline(r: Reality, reps: int, max_trials: int, seed: int) -> dict[str, np.ndarray]:
    """(c)'s real-only baseline: flat prior, round-robin, same stopping rule; per repetition."""
    from selection import planning
    from selection.prediction import GRID

    prior = planning.flat_prior(GRID, len(r.true_p))
    out: dict[str, list[float]] = {"trials": [], "wrong": [], "capped": []}
    for rep in range(reps):
        rng = np.random.default_rng([seed, rep, 1])
        res = planning.run_sequential(
            r.true_p,
            GRID,
            prior,
            eps=EPS,
            confidence=CONFIDENCE,
            batch=BATCH,
            max_trials=max_trials,
            allocation="uniform",
            rng=rng,
        )
        out["trials"].append(res.trials)
        out["wrong"].append(not res.correct)
        out["capped"].append(not res.done)
    return {k: np.array(v, dtype=float) for k, v in out.items()}


def run_cell(
    r: Reality, m: int, k: int, reps: int, plan_reps: int, max_trials: int, seed: int, z: float
) -> dict[str, np.ndarray]:
    """One (m, k) cell: per repetition the coverage, widths and planner trials."""
    from evaluator.results import wilson_interval
    from selection import planning
    from selection.prediction import Outcome, PredictConfig, predict

    K = len(r.true_p)
    labels = r.ranking["checkpoint"].tolist()
    keys = (
        "cov_out",
        "cov_in",
        "cov0_out",
        "cov0_in",
        "w_out",
        "w_in",
        "wil_out",
        "wil_in",
        "wil_cov_in",
        "sim",
        "ood",
        "useless",
        "infl",
    )
    acc: dict[str, list[float]] = {key: [] for key in keys}
    plan: dict[str, list[float]] = {"trials": [], "wrong": [], "capped": []}
    for rep in range(reps):
        pick = np.random.default_rng([seed, rep, m]).choice(K, size=m, replace=False)
        rng = np.random.default_rng([seed, rep, m, k])
        succ = rng.binomial(k, r.true_p[pick])
        outcomes = {labels[i]: Outcome(int(s), k) for i, s in zip(pick, succ, strict=True)}
        res = predict(r.ranking, outcomes, PredictConfig(level=LEVEL, sim_episodes=r.sim_episodes, seed=rep))
        f = res.frame.set_index("checkpoint").loc[labels]
        lo, hi = f["lo"].to_numpy(float), f["hi"].to_numpy(float)
        inside = (r.true_p >= lo - 1e-12) & (r.true_p <= hi + 1e-12)
        # a true rate of exactly 0 (1) is never inside a logit-grid interval (lo > 0): counted
        # inside too when the interval reaches it at the printed precision (lo < 0.005)
        edge = inside | ((r.true_p == 0) & (lo < EDGE)) | ((r.true_p == 1) & (hi > 1 - EDGE))
        held = np.ones(K, dtype=bool)
        held[pick] = False
        acc["cov_out"].append(inside[held].mean())
        acc["cov_in"].append(inside[~held].mean())
        acc["cov0_out"].append(edge[held].mean())
        acc["cov0_in"].append(edge[~held].mean())
        acc["w_out"].append((hi - lo)[held].mean())
        acc["w_in"].append((hi - lo)[~held].mean())
        acc["wil_out"].append(np.mean([_expected_wilson_width(p, k, z) for p in r.true_p[held]]))
        wil = [wilson_interval(int(s), k, z=z) for s in succ]
        acc["wil_in"].append(np.mean([b - a for a, b in wil]))
        acc["wil_cov_in"].append(np.mean([a <= p <= b for (a, b), p in zip(wil, r.true_p[pick], strict=True)]))
        model = res.model
        feats = model.features if model is not None else []
        acc["sim"].append("sim" in feats and not (model is not None and model.useless))
        acc["ood"].append("ood" in feats and not (model is not None and model.useless))
        acc["useless"].append(bool(model is not None and model.useless))
        acc["infl"].append(model.inflation if model is not None else np.nan)
        if rep < plan_reps:
            seq = planning.run_sequential(
                r.true_p,
                res.grid,
                res.density,
                eps=EPS,
                confidence=CONFIDENCE,
                batch=BATCH,
                max_trials=max_trials,
                allocation="ttts",
                rng=np.random.default_rng([seed, rep, m, k, 2]),
            )
            plan["trials"].append(m * k + seq.trials)
            plan["wrong"].append(not seq.correct)
            plan["capped"].append(not seq.done)
    out = {key: np.array(v, dtype=float) for key, v in acc.items()}
    out.update({f"plan_{key}": np.array(v, dtype=float) for key, v in plan.items()})
    return out


def _pct(ratio: float) -> str:
    d = 1.0 - ratio
    return f"{abs(d) * 100:.0f}% {'narrower' if d >= 0 else 'WIDER'}"


def evaluate_reality(
    r: Reality, ms: list[int], ks: list[int], reps: int, plan_reps: int, max_trials: int, seed: int
) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """The table of one (family, reality), its verdict lines and its CSV rows."""
    z = float(norm.ppf(0.5 + LEVEL / 2))
    K = len(r.true_p)
    t0 = time.perf_counter()
    base = uniform_baseline(r, plan_reps, max_trials, seed)
    u_mean = float(base["trials"].mean())
    u_ci = _boot(base["trials"], seed=seed)
    rows, csv_rows = [], []
    pooled = {key: [] for key in ("cov_out", "cov_in", "cov0_out", "w_out", "wil_out", "w_in", "wil_in", "plan")}
    for m in ms:
        for k in ks:
            t1 = time.perf_counter()
            c = run_cell(r, m, k, reps, plan_reps, max_trials, seed, z)
            dt = time.perf_counter() - t1
            ratio_out = c["w_out"].mean() / c["wil_out"].mean()
            ratio_in = c["w_in"].mean() / c["wil_in"].mean()
            p_mean = float(c["plan_trials"].mean())
            speed = u_mean / p_mean
            speed_ci = _boot_ratio(base["trials"], c["plan_trials"], seed=seed)
            b_out, b_in, b_plan = (_boot(c[key], seed=seed) for key in ("cov_out", "cov_in", "plan_trials"))
            rows.append(
                {
                    "m": m,
                    "k": k,
                    "cov out": _ci(c["cov_out"].mean(), b_out),
                    "cov in": _ci(c["cov_in"].mean(), b_in),
                    "cov out 0ok": _ci(c["cov0_out"].mean(), _boot(c["cov0_out"], seed=seed)),
                    "in 0ok": f"{c['cov0_in'].mean():.2f}",
                    "Wilson in": f"{c['wil_cov_in'].mean():.2f}",
                    "width out / W(k)": f"{c['w_out'].mean():.3f}/{c['wil_out'].mean():.3f} ({_pct(ratio_out)})",
                    "width in / W(k)": f"{c['w_in'].mean():.3f}/{c['wil_in'].mean():.3f} ({_pct(ratio_in)})",
                    "trials planner": _ci(p_mean, b_plan, ".0f"),
                    "uniform/planner": _ci(speed, speed_ci),
                    "wrong P/U": f"{c['plan_wrong'].mean():.2f}/{base['wrong'].mean():.2f}",
                    "capped P/U": f"{int(c['plan_capped'].sum())}/{int(base['capped'].sum())}",
                    "sim|ood|fail": f"{c['sim'].mean():.2f}|{c['ood'].mean():.2f}|{c['useless'].mean():.2f}",
                    "s": f"{dt:.0f}",
                }
            )
            csv_rows.append(
                {
                    "family": r.family,
                    "reality": r.label,
                    "checkpoints": K,
                    "m": m,
                    "k": k,
                    "reps": reps,
                    "plan_reps": len(c["plan_trials"]),
                    "coverage_heldout": c["cov_out"].mean(),
                    "coverage_heldout_lo": b_out[0],
                    "coverage_heldout_hi": b_out[1],
                    "coverage_trials": c["cov_in"].mean(),
                    "coverage_trials_lo": b_in[0],
                    "coverage_trials_hi": b_in[1],
                    "coverage_heldout_0ok": c["cov0_out"].mean(),
                    "coverage_trials_0ok": c["cov0_in"].mean(),
                    "wilson_coverage_trials": c["wil_cov_in"].mean(),
                    "width_heldout": c["w_out"].mean(),
                    "wilson_width_heldout_at_k": c["wil_out"].mean(),
                    "width_ratio_heldout": ratio_out,
                    "width_trials": c["w_in"].mean(),
                    "wilson_width_trials": c["wil_in"].mean(),
                    "width_ratio_trials": ratio_in,
                    "planner_trials": p_mean,
                    "planner_trials_lo": b_plan[0],
                    "planner_trials_hi": b_plan[1],
                    "uniform_trials": u_mean,
                    "uniform_trials_lo": u_ci[0],
                    "uniform_trials_hi": u_ci[1],
                    "speedup": speed,
                    "speedup_lo": speed_ci[0],
                    "speedup_hi": speed_ci[1],
                    "planner_wrong": c["plan_wrong"].mean(),
                    "uniform_wrong": base["wrong"].mean(),
                    "planner_capped": int(c["plan_capped"].sum()),
                    "uniform_capped": int(base["capped"].sum()),
                    "share_sim_feature": c["sim"].mean(),
                    "share_ood_feature": c["ood"].mean(),
                    "share_model_failed": c["useless"].mean(),
                    "mean_inflation": float(np.nanmean(c["infl"])) if np.isfinite(c["infl"]).any() else np.nan,
                    "seconds": dt,
                }
            )
            for key in ("cov_out", "cov_in", "cov0_out", "w_out", "wil_out", "w_in", "wil_in"):
                pooled[key].append(c[key])
            pooled["plan"].append(c["plan_trials"])
            print(f"  m={m:2d} k={k:2d}: {dt:.0f} s", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    csv = pd.DataFrame(csv_rows)
    # verdicts: over all (m, k) cells of this reality (each cell weighs the same)
    cov = float(np.mean([x.mean() for x in pooled["cov_out"]]))
    cov0 = float(np.mean([x.mean() for x in pooled["cov0_out"]]))
    worst = csv.loc[csv["coverage_heldout"].idxmin()]
    below = int((csv["coverage_heldout"] < TARGET_COVERAGE).sum())
    va = (
        f"(a) coverage held-out {cov:.3f} averaged over {len(csv)} cells (>= {TARGET_COVERAGE}: "
        f"{'met' if cov >= TARGET_COVERAGE else f'MISSED by {TARGET_COVERAGE - cov:.3f}'}); {below} cell(s) below, "
        f"worst m={int(worst['m'])},k={int(worst['k'])}: {worst['coverage_heldout']:.2f}; with trials "
        f"{np.mean([x.mean() for x in pooled['cov_in']]):.3f}; counting a true rate of 0 inside when lo < {EDGE}: "
        f"held-out {cov0:.3f} ({'met' if cov0 >= TARGET_COVERAGE else f'MISSED by {TARGET_COVERAGE - cov0:.3f}'})"
    )
    r_in = float(np.mean([a.mean() for a in pooled["w_in"]]) / np.mean([b.mean() for b in pooled["wil_in"]]))
    r_out = float(np.mean([a.mean() for a in pooled["w_out"]]) / np.mean([b.mean() for b in pooled["wil_out"]]))
    n_in = 1 - r_in
    vb = (
        f"(b) width with trials {n_in * 100:.0f}% narrower than Wilson at the same k (>= {TARGET_NARROWER * 100:.0f}%: "
        f"{'met' if n_in >= TARGET_NARROWER else f'MISSED by {(TARGET_NARROWER - n_in) * 100:.0f} points'}; "
        f"cells meeting it {(1 - csv['width_ratio_trials'] >= TARGET_NARROWER).sum()}/{len(csv)}); held-out (no trials) "
        f"vs Wilson at k trials each: {_pct(r_out)} (cells meeting it "
        f"{(1 - csv['width_ratio_heldout'] >= TARGET_NARROWER).sum()}/{len(csv)})"
    )
    p_all = float(np.mean([x.mean() for x in pooled["plan"]]))
    sp = u_mean / p_all
    vc = (
        f"(c) trials to an eps-best pick: planner {p_all:.0f} (mean over cells) vs uniform {_ci(u_mean, u_ci, '.0f')}: "
        f"{sp:.2f}x fewer (>= {TARGET_RATIO:g}x: {'met' if sp >= TARGET_RATIO else f'MISSED by {TARGET_RATIO - sp:.2f}x'}; "
        f"cells meeting it {(csv['speedup'] >= TARGET_RATIO).sum()}/{len(csv)}); wrong choice planner "
        f"{csv['planner_wrong'].mean():.2f} vs uniform {base['wrong'].mean():.2f}"
    )
    print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return table, [va, vb, vc], csv


def _log_mlflow(root: Path, csv_path: Path, summary: list[str], run_name: str) -> None:
    import mlflow

    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bench-prediction")
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment("bench-prediction", artifact_location=(root / "mlartifacts").resolve().as_uri())
    )
    run = client.create_run(exp_id, run_name=run_name)
    rid = run.info.run_id
    client.log_artifact(rid, str(csv_path))
    client.set_tag(rid, "twinrank.prediction", " | ".join(summary)[:4900])
    client.set_terminated(rid)


def _provenance() -> str:
    """Git HEAD and a digest of the predictor and planner modules as imported (they change often)."""
    import hashlib
    import subprocess

    import selection.planning
    import selection.prediction

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    parts = [f"git HEAD {git('rev-parse', '--short', 'HEAD') or '?'}"]
    for mod in (selection.prediction, selection.planning):
        path = Path(str(mod.__file__))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        dirty = " (modified since HEAD)" if git("status", "--porcelain", "--", str(path)) else ""
        parts.append(f"{path.name} sha256 {digest}{dirty}")
    return "; ".join(parts)


def main() -> None:
    if "--quick" in sys.argv[1:]:
        os.environ["TWINRANK_BENCH_QUICK"] = "1"
    quick = _quick()
    try:  # a small, sequential workload: keep BLAS to one thread on the shared machine
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    reps = int(os.environ.get("TWINRANK_BENCH_PRED_REPS", "8" if quick else "40"))
    plan_reps = min(reps, int(os.environ.get("TWINRANK_BENCH_PRED_PLAN_REPS", str(reps))))
    ms = _ints("TWINRANK_BENCH_PRED_M", "4,8,12")
    ks = _ints("TWINRANK_BENCH_PRED_K", "5,10,20")
    max_trials = int(os.environ.get("TWINRANK_BENCH_PRED_MAX_TRIALS", "3000"))
    if os.environ.get("TWINRANK_BENCH_PRED_CACHES"):
        caches = [(p.strip(), Path(p.strip()).name, "") for p in os.environ["TWINRANK_BENCH_PRED_CACHES"].split(",")]
    else:
        caches = list(DEFAULT_CACHES)
    t0 = time.perf_counter()
    print(_provenance())
    print(
        f"{reps} repetitions per cell ({plan_reps} for planning), m in {ms} (capped at K - 2), k in {ks}; "
        f"{LEVEL:.0%} intervals; eps {EPS}, confidence {CONFIDENCE}, batch {BATCH}, at most {max_trials} "
        f"sequential trials; intervals: 95 % percentile bootstrap over repetitions"
    )
    print(
        "true rate of a checkpoint = its reality ground-truth estimate (episodes below); real trials = "
        "seeded Bernoulli draws from it"
    )
    summary: list[str] = []
    for seed, (folder, family, note) in enumerate(caches):
        root = Path(folder)
        if not (root / "rank" / "ranking.csv").is_file():
            line = f"{family}: no cached ranking in {root} (run bench_selection for it first); skipped"
            print("\n" + line)
            summary.append(line)
            continue
        frames = []
        fam_summary: list[str] = []
        for label, rank_dir, truth_dir in REALITIES:
            if not (root / rank_dir / "ranking.csv").is_file() or not (root / truth_dir).is_dir():
                print(f"\n--- {family}, {label}: not cached in {root}; skipped")
                continue
            r = load_reality(root, family, label, rank_dir, truth_dir)
            K = len(r.true_p)
            m_use = sorted({min(m, K - 2) for m in ms if min(m, K - 2) >= 1})
            best = np.sort(r.true_p)[::-1]
            print(
                f"\n--- {family}, {label}: {K} checkpoints; true rates {r.true_p.min():.2f}..{r.true_p.max():.2f} "
                f"(best {best[0]:.2f}, {int((r.true_p >= best[0] - EPS - 1e-12).sum())} within eps of it; "
                f"{r.truth_episodes} ground-truth episodes each); sim_perturbed from "
                f"{r.sim_episodes if r.sim_episodes else 'unknown'} episodes per condition"
            )
            if note:
                print(f"    NOTE: {note}")
            print(f"    [{family}, {label}]", file=sys.stderr, flush=True)
            table, verdicts, csv = evaluate_reality(r, m_use, ks, reps, plan_reps, max_trials, seed)
            with pd.option_context("display.width", 250, "display.max_colwidth", 60):
                print(table.to_string(index=False))
            print(
                "    (out: held-out checkpoints, no real trials; in: the m checkpoints with k trials each; 0ok: a true "
                "rate of 0 counted inside when lo < 0.005; Wilson in: real-only Wilson coverage at k. "
                "W(k): real-only 90 % Wilson width at k trials; for held-out checkpoints real-only would need "
                "k trials each, the predictor spent none on them. trials planner = m k + sequential TTTS trials; "
                "uniform = flat prior, round-robin, from zero. wrong/capped: planner/uniform. sim|ood|fail: share "
                "of fits using the sim / OOD feature / declared useless)"
            )
            for v in verdicts:
                print("targets: " + v)
            tag = f"{family}, {label}" + (" [weak family: small reality spread]" if note else "")
            fam_summary += [f"{tag}: {v}" for v in verdicts]
            frames.append(csv)
        if frames:
            csv_path = root / ("bench_prediction_quick.csv" if quick else "bench_prediction.csv")
            pd.concat(frames).to_csv(csv_path, index=False)
            print(f"table: {csv_path}")
            try:
                _log_mlflow(root, csv_path, fam_summary, f"prediction-{family}{'-quick' if quick else ''}")
            except Exception as exc:  # noqa: BLE001 - the figures are printed; the MLflow copy is optional
                print(f"MLflow run not logged: {type(exc).__name__}: {exc}")
        summary += fam_summary
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    for line in summary:
        print("targets: " + line)


if __name__ == "__main__":
    main()
