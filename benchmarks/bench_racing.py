"""Adaptive racing vs the fixed design: episodes used and correct-pick rate on two real checkpoint families.

Families (trained once and cached): 20 BC checkpoints on ``reach`` (30 demos, epochs 2..40) and
20 on the mission task ``mug_to_sink`` (80 demos, epochs 10..200). Truth: one large fixed
campaign per family (nominal, object_pose, light_intensity, actuation_latency, combined; 80
seeds each = 400 paired episodes per checkpoint), cached as an outcome matrix; a checkpoint's
true success is its mean over the whole campaign.

Then, from the cache alone (no simulation), ``REPS`` selections per family and list size ``n``
(episodes per checkpoint): draw a campaign list from the cached columns (stratified by condition,
``n // 5`` seeds of each and the remainder on randomly chosen conditions, seeds drawn without
replacement; the same columns for every checkpoint), and pick

- fixed design: the checkpoint with the highest success on the whole list (ties at random);
- adaptive racing (:func:`evaluator.racing.race_outcomes`, epsilon 0.05, delta 0.05, rounds of
  8 episodes, the evaluator's default): the same list in a random order, the list being the race's budget; when the
  race names no winner (survivors tied), a random one of the survivors with the highest success
  on the episodes they ran.

A pick is correct when its true success is within epsilon of the truly best. Printed per family:
the family; the fixed design's correct-pick rate on a fine grid of ``n`` (its smallest ``n`` at
``>= 1 - delta``); per ``n`` of ``GRID`` and that smallest ``n``: episodes used (racing: mean and
90th percentile), the ratio, each design's correct-pick rate with its Wilson 95 % interval, and
how the races stopped; then the issue's target: racing at the fixed design's correct-pick rate
with >= 3x fewer episodes. Caveat: the lists are drawn from the truth campaign itself (column
``of truth``), which flatters large lists of either design.

Cached in ``TWINRANK_BENCH_CACHE`` (default ``.bench_cache/racing``): the families, the truth
campaigns (``truth_<task>.npz``: ``y`` (checkpoints x episodes, 0/1, the spec's episode order),
``conditions``, ``seeds``, ``labels``; ``truth_<task>.json``: wall time).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

EPSILON = 0.05
DELTA = 0.05
REPS = 500
ROUND = 8  # episodes per surviving checkpoint per racing round (the evaluator default: one work unit)
GRID = (48, 96, 192)  # list sizes (episodes per checkpoint) raced
FINE = tuple(range(12, 400, 12))  # list sizes the fixed design is scanned on
TARGET = 3.0
CONDITIONS = ["nominal", "object_pose", "light_intensity", "actuation_latency", "combined"]
TRUTH_SEEDS = 80
FAMILIES = {
    # task: (demos, epochs, checkpoint every)
    "reach": (30, 40, 2),
    "mug_to_sink": (80, 200, 10),
}


def _cache() -> Path:
    p = Path(os.environ.get("TWINRANK_BENCH_CACHE", ".bench_cache/racing"))
    p.mkdir(parents=True, exist_ok=True)
    return p.resolve()


def _family(root: Path, task: str) -> list[str]:
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training

    listing = root / f"family_{task}.txt"
    if not listing.is_file():
        demos, epochs, every = FAMILIES[task]
        t0 = time.perf_counter()
        cfg = TrainConfig(
            algo="bc",
            task=task,
            demos=DemoCfg(episodes=demos, seed=1000),
            bc=BCConfig(epochs=epochs, batch_size=128),
            checkpoint_every=every,
            eval_episodes=0,
            experiment="bench-racing",
            model_name=f"{task}-bench-racing",
        )
        res = run_training(cfg, root / task, tracking_uri=f"sqlite:///{root}/mlflow.db", cache_dir=root / "demos")
        wall = time.perf_counter() - t0
        (root / f"family_{task}.json").write_text(json.dumps({"train_wall_s": wall}))
        listing.write_text("\n".join(str(r.path) for r in res.checkpoints))
        print(f"{task}: trained {len(res.checkpoints)} checkpoints in {wall:.0f} s (demos included)")
    return listing.read_text().split()


def _truth(root: Path, task: str, paths: list[str]) -> dict:
    """The cached outcome matrix of the large fixed campaign: ``y`` (K, N), ``conditions`` and
    ``seeds`` (N,), ``labels`` (K,)."""
    from evaluator import EvalSpec, evaluate
    from evaluator.spec import VideoCfg

    path = root / f"truth_{task}.npz"
    if not path.is_file():
        spec = EvalSpec(
            name=f"bench-racing-{task}",
            tasks=[task],
            conditions=CONDITIONS,
            episodes_per_condition=TRUTH_SEEDS,
            video=VideoCfg(enabled=False),
        )
        t0 = time.perf_counter()
        res = evaluate(paths, spec, root / f"campaign_{task}", workers=2, videos=False, plots=False)
        wall = time.perf_counter() - t0
        eps = spec.episodes(task)
        col = {(e.condition, int(e.seed)): j for j, e in enumerate(eps)}
        ids = [s.checkpoint_id for s in res.checkpoints]
        y = np.full((len(ids), len(eps)), np.nan)
        for r in res.episodes:
            y[ids.index(r.checkpoint_id), col[(r.condition, int(r.seed))]] = float(r.success)
        if np.isnan(y).any():
            raise RuntimeError(f"{task}: the truth campaign is incomplete ({int(np.isnan(y).sum())} episodes missing)")
        np.savez(
            path,
            y=y,
            conditions=np.array([e.condition for e in eps]),
            seeds=np.array([e.seed for e in eps]),
            labels=np.array([s.label for s in res.checkpoints]),
        )
        (root / f"truth_{task}.json").write_text(
            json.dumps({"wall_s": wall, "episodes": int(y.size), "s_per_episode_2_workers": wall / y.size})
        )
        print(
            f"{task}: truth campaign {y.size} episodes in {wall:.0f} s ({wall / y.size * 1000:.0f} ms/episode, 2 workers)"
        )
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _wilson(k: int, n: int, z: float = 1.959964) -> str:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{p:.3f} [{centre - half:.3f},{centre + half:.3f}]"


def _lists(conds: np.ndarray, n: int, reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``reps`` campaign lists of ``n`` columns: stratified by condition, seeds without replacement."""
    names = np.unique(conds)
    pools = [np.flatnonzero(conds == c) for c in names]
    out = []
    for _ in range(reps):
        per = np.full(len(names), n // len(names))
        per[rng.choice(len(names), n % len(names), replace=False)] += 1
        out.append(np.concatenate([rng.choice(pool, size=int(m), replace=False) for pool, m in zip(pools, per)]))
    return out


def _list_rng(fam: int, n: int) -> np.random.Generator:
    return np.random.default_rng([fam, n, 0])


def _fixed_pick(y: np.ndarray, rng: np.random.Generator) -> int:
    m = y.mean(axis=1)
    return int(rng.choice(np.flatnonzero(m == m.max())))


def _race_pick(y: np.ndarray, cfg, rng: np.random.Generator):
    """Race ``y`` (already in race order); the pick, and the race's result."""
    from evaluator.racing import race_outcomes

    res = race_outcomes(y, cfg, round_episodes=ROUND)
    if res.winner is not None:
        return int(res.winner), res
    surv = np.array([int(s) for s in res.survivors])
    m = np.array([y[i, : res.episodes_run[str(i)]].mean() for i in surv])
    return int(rng.choice(surv[m == m.max()])), res


def _family_line(task: str, truth: dict, root: Path) -> None:
    y, conds = truth["y"], truth["conditions"]
    true = y.mean(axis=1)
    best = true.max()
    order = np.argsort(-true)
    within = int((true >= best - EPSILON).sum())
    print(
        f"{task}: K = {len(true)}, true success {true.min():.3f}..{best:.3f} over {y.shape[1]} episodes each; "
        f"{within} within {EPSILON} of the best; next below: "
        + (f"{true[order[within]]:.3f}" if within < len(true) else "none")
    )
    steps = [str(lab).rsplit("_", 1)[-1].lstrip("0") for lab in truth["labels"]]
    print("  true success by epoch: " + " ".join(f"{s}:{v:.3f}" for s, v in zip(steps, true)))
    same = [
        c for c in np.unique(conds) if c != "nominal" and np.array_equal(y[:, conds == c], y[:, conds == "nominal"])
    ]
    meta = root / f"truth_{task}.json"
    cost = ""
    if meta.is_file():
        m = json.loads(meta.read_text())
        cost = (
            f"; truth campaign {m['wall_s']:.0f} s ({m['s_per_episode_2_workers'] * 1000:.0f} ms/episode on 2 workers)"
        )
    print(f"  conditions identical to nominal episode for episode: {', '.join(same) or 'none'}{cost}")


def _compare(fam: int, task: str, truth: dict) -> dict:
    from evaluator.racing import RacingCfg

    y, conds = truth["y"], truth["conditions"]
    k, total = y.shape
    true = y.mean(axis=1)
    good = true >= true.max() - EPSILON
    cfg = RacingCfg(epsilon=EPSILON, delta=DELTA)

    fine = {}  # the lists of size n are the same here and in the table (seeded by family and n)
    for n in FINE:
        rng = np.random.default_rng([fam, n, 1])
        fine[n] = sum(bool(good[_fixed_pick(y[:, c], rng)]) for c in _lists(conds, n, REPS, _list_rng(fam, n)))
    n_fixed = next((n for n in FINE if fine[n] / REPS >= 1 - DELTA), None)
    shown = [n for n in FINE if n_fixed is None or n <= n_fixed + 24]
    print("  fixed design, correct-pick rate by n: " + " ".join(f"{n}:{fine[n] / REPS:.3f}" for n in shown))

    print(
        f"  {'n':>4} {'of truth':>8} {'fixed eps':>9} {'racing eps (p90)':>16} {'ratio':>5}  "
        f"{'fixed correct [95% CI]':>22}  {'racing correct [95% CI]':>22}  racing stops"
    )
    rows = []
    for n in sorted(set(GRID) | ({n_fixed} if n_fixed else set())):
        rng = np.random.default_rng([fam, n, 2])  # race orders and racing ties
        tie = np.random.default_rng([fam, n, 1])  # the fixed design's ties, as in the scan
        f_ok = r_ok = 0
        used: list[int] = []
        stops: dict[str, int] = {}
        for cols in _lists(conds, n, REPS, _list_rng(fam, n)):
            f_ok += bool(good[_fixed_pick(y[:, cols], tie)])
            pick, res = _race_pick(y[:, rng.permutation(cols)], cfg, rng)
            r_ok += bool(good[pick])
            used.append(res.episodes)
            stops[res.stop] = stops.get(res.stop, 0) + 1
        mean_used = float(np.mean(used))
        rows.append({"n": n, "fixed": k * n, "f_rate": f_ok / REPS, "racing": mean_used, "r_rate": r_ok / REPS})
        print(
            f"  {n:>4} {n / total:>8.2f} {k * n:>9} {mean_used:>9.0f} ({np.percentile(used, 90):>4.0f}) "
            f"{k * n / mean_used:>5.2f}  {_wilson(f_ok, REPS):>22}  {_wilson(r_ok, REPS):>22}  "
            + ", ".join(f"{s} {c}" for s, c in sorted(stops.items()))
        )
    ok = [r for r in rows if r["r_rate"] >= 1 - DELTA]
    if n_fixed is None or not ok:
        print(f"  target: no comparison (fixed n at {1 - DELTA:.2f}: {n_fixed}; racing rows there: {len(ok)})")
        return {"task": task, "ratio": None}
    cheapest = min(ok, key=lambda r: r["racing"])
    ratio = k * n_fixed / cheapest["racing"]
    print(
        f"  target: fixed design reaches {1 - DELTA:.2f} at n = {n_fixed} ({k * n_fixed} episodes, "
        f"{fine[n_fixed] / REPS:.3f}); cheapest racing row at >= {1 - DELTA:.2f}: n = {cheapest['n']}, "
        f"{cheapest['racing']:.0f} episodes ({cheapest['r_rate']:.3f}): {ratio:.2f}x fewer "
        f"({'met' if ratio >= TARGET else 'not met'}, target {TARGET:g}x)"
    )
    return {"task": task, "ratio": ratio}


def main() -> None:
    root = _cache()
    print(
        f"epsilon {EPSILON}, delta {DELTA}, racing rounds of {ROUND}; {REPS} selections per row "
        f"(the same lists for both designs); cache {root}"
    )
    t0 = time.perf_counter()
    out = []
    for fam, task in enumerate(FAMILIES):
        truth = _truth(root, task, _family(root, task))
        _family_line(task, truth, root)
        out.append(_compare(fam, task, truth))
    print(
        "episodes saved by racing at the fixed design's correct-pick rate: "
        + ", ".join(f"{o['task']} {o['ratio']:.2f}x" if o["ratio"] else f"{o['task']} n/a" for o in out)
        + f" (target {TARGET:g}x); {time.perf_counter() - t0:.0f} s from the cache"
    )


if __name__ == "__main__":
    main()
