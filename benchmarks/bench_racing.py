"""Adaptive racing vs the fixed design: episodes used and correct-pick rate on real checkpoint families.

Families (trained once and cached): 20 BC checkpoints on ``reach`` (30 demos, epochs 2..40) and
20 on the mission task ``mug_to_sink`` (80 demos, epochs 10..200). "Truth": one large fixed
campaign per family (5 conditions x 80 seeds = 400 paired episodes per checkpoint), cached as
an outcome matrix; a checkpoint's true success is its mean over it.

Then, from the cache alone (no simulation), ``REPS`` selections per family and design size:
draw a campaign list of ``n`` episodes per checkpoint (the same seeds for every checkpoint,
stratified by condition, seeds drawn without replacement), and pick

- fixed design: the checkpoint with the highest success on the whole list (ties at random);
- adaptive racing (:func:`evaluator.racing.race_outcomes`, epsilon 0.05, delta 0.05, rounds of
  8 episodes, the evaluator's default of one work unit): the same list in a random order, the
  list being the race's budget; a tie at the stop is broken at random.

A pick is correct when its true success is within epsilon of the truly best. Printed per
family and ``n``: episodes used (racing: mean and 90th percentile), the ratio, the correct-pick
rate of each design with its Wilson 95 % interval, and how the races stopped; then the fixed
design's smallest size on the grid that reaches 1 - delta, against the racing rows that do.
Caveat: a list of 32 seeds per condition shares 40 % of its episodes with the truth campaign,
which flatters the larger fixed designs more than the races (they stop before using the list).

Cached in ``TWINRANK_BENCH_CACHE`` (default ``.bench_cache/racing``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

EPSILON = 0.05
DELTA = 0.05
REPS = 300
CONDITIONS = ["nominal", "object_pose", "light_intensity", "actuation_latency", "combined"]
TRUTH_SEEDS = 80
DESIGNS = (8, 16, 32)
ROUND = 8  # seeds per condition of the campaign list (x 5 conditions)
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
        listing.write_text("\n".join(str(r.path) for r in res.checkpoints))
        print(f"{task}: trained {len(res.checkpoints)} checkpoints in {time.perf_counter() - t0:.0f} s")
    return listing.read_text().split()


def _truth(root: Path, task: str, paths: list[str]) -> dict:
    """The cached outcome matrix of the large fixed campaign: ``y`` (K, N), ``conditions`` (N,)."""
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
            f"{task}: truth campaign {y.size} episodes in {wall:.0f} s ({wall / y.size * 1000:.0f} ms/episode on 2 workers)"
        )
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _wilson(k: int, n: int) -> str:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return f"{k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _select(truth: dict, per_condition: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A campaign list: ``per_condition`` seeds of every condition, the same columns for all."""
    conds = truth["conditions"]
    cols = np.concatenate(
        [rng.choice(np.flatnonzero(conds == c), size=per_condition, replace=False) for c in np.unique(conds)]
    )
    return truth["y"][:, cols], cols


def _compare(task: str, truth: dict) -> None:
    from evaluator.racing import RacingCfg, race_outcomes

    y = truth["y"]
    true = y.mean(axis=1)
    best = true.max()
    good = true >= best - EPSILON
    k = len(true)
    print(
        f"{task}: {k} checkpoints, true success {true.min():.2f}..{best:.2f} (n = {y.shape[1]} each); "
        f"{int(good.sum())} within {EPSILON} of the best; sorted: "
        + " ".join(f"{v:.2f}" for v in sorted(true, reverse=True))
    )
    cfg = RacingCfg(epsilon=EPSILON, delta=DELTA)
    print(
        f"  {'n/ckpt':>6}  {'fixed eps':>9}  {'racing eps (p90)':>16}  {'ratio':>5}  "
        f"{'fixed correct [95% CI]':>24}  {'racing correct [95% CI]':>24}  stops"
    )
    rows: list[tuple[int, int, float, float, float]] = []
    for per_c in DESIGNS:
        rng = np.random.default_rng([per_c, k, 17])
        fixed_ok = race_ok = 0
        used: list[int] = []
        stops: dict[str, int] = {}
        for _ in range(REPS):
            lst, _cols = _select(truth, per_c, rng)
            m = lst.mean(axis=1)
            top = np.flatnonzero(m == m.max())
            fixed_ok += bool(good[rng.choice(top)])
            order = rng.permutation(lst.shape[1])
            res = race_outcomes(lst[:, order], cfg, round_episodes=ROUND)
            pick = int(res.winner) if res.winner is not None else int(rng.choice([int(s) for s in res.survivors]))
            race_ok += bool(good[pick])
            used.append(res.episodes)
            stops[res.stop] = stops.get(res.stop, 0) + 1
        n = per_c * len(np.unique(truth["conditions"]))
        fixed_eps = k * n
        mean_used = float(np.mean(used))
        rows.append((n, fixed_eps, fixed_ok / REPS, mean_used, race_ok / REPS))
        print(
            f"  {n:>6}  {fixed_eps:>9}  {mean_used:>9.0f} ({np.percentile(used, 90):>4.0f})  "
            f"{fixed_eps / mean_used:>5.2f}  {_wilson(fixed_ok, REPS):>24}  {_wilson(race_ok, REPS):>24}  "
            + ", ".join(f"{s} {c}" for s, c in sorted(stops.items()))
        )
    fixed_ok_rows = [r for r in rows if r[2] >= 1 - DELTA]
    race_ok_rows = [r for r in rows if r[4] >= 1 - DELTA]
    if fixed_ok_rows and race_ok_rows:
        f = fixed_ok_rows[0]
        cheapest = min(race_ok_rows, key=lambda r: r[3])
        print(
            f"  at >= {1 - DELTA:.2f} correct: smallest fixed design n = {f[0]} ({f[1]} episodes, {f[2]:.3f}); "
            f"cheapest racing row n = {cheapest[0]} ({cheapest[3]:.0f} episodes, {cheapest[4]:.3f}): "
            f"{f[1] / cheapest[3]:.2f}x fewer episodes than that fixed design"
        )
    else:
        print(
            f"  no row of the fixed design ({bool(fixed_ok_rows)}) or of racing ({bool(race_ok_rows)}) reaches {1 - DELTA:.2f}"
        )


def main() -> None:
    root = _cache()
    print(f"epsilon {EPSILON}, delta {DELTA}, {REPS} selections per row; cache {root}")
    for task in FAMILIES:
        paths = _family(root, task)
        truth = _truth(root, task, paths)
        _compare(task, truth)


if __name__ == "__main__":
    main()
