"""`twinrank rank` cost: wall time and environment episodes of the ranking job on a small family.

Setup: 6 BC checkpoints on ``reach`` (epochs 5..30 on 8 demos), 10 proxy-real log episodes,
a spec of nominal + 3 single factors + combined with 16 episodes each (80 per checkpoint),
OOD references of 10 episodes per condition, 2 local workers. Episodes are counted where
they run: the evaluator campaign's (``executed``) and any environment reset in this process
outside it (the OOD reference rollouts of the code before the single rollout engine: 10
nominal + 10 perturbed per checkpoint). Since the campaign records the references itself,
the count should equal what the spec alone asks for (6 x 80 = 480).

Cached in ``TWINRANK_BENCH_CACHE`` (default ``.bench_cache/rank``): the family and the logs;
the ranking itself runs fresh every time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

TASK = "reach"


def _cache() -> Path:
    p = Path(os.environ.get("TWINRANK_BENCH_CACHE", ".bench_cache/rank"))
    p.mkdir(parents=True, exist_ok=True)
    return p.resolve()


def main() -> None:
    from evaluator.spec import EvalSpec, VideoCfg
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training
    from selection.job import OODSettings, rank_checkpoints
    from selection.proxy_real import record_logs
    from twin.env import TwinEnv

    root = _cache()
    uri = f"sqlite:///{root}/mlflow.db"
    family = root / "family.txt"
    if not family.is_file():
        cfg = TrainConfig(
            algo="bc",
            task=TASK,
            demos=DemoCfg(episodes=8, seed=1000),
            bc=BCConfig(epochs=30, batch_size=64),
            checkpoint_every=5,
            eval_episodes=0,
            experiment="bench-rank",
            model_name="reach-bench-rank",
        )
        res = run_training(cfg, root / "bc", tracking_uri=uri, cache_dir=root / "demos")
        family.write_text("\n".join(str(r.path) for r in res.checkpoints))
    paths = family.read_text().split()
    bag = root / "proxy_real_logs"
    if not bag.exists():
        record_logs(TASK, bag, episodes=10)
    spec = EvalSpec(
        name="bench-rank",
        tasks=[TASK],
        conditions=["nominal", "object_pose", "light_intensity", "actuation_latency", "combined"],
        episodes_per_condition=16,
        video=VideoCfg(enabled=False),
    )
    resets = {"n": 0}
    real_reset = TwinEnv.reset

    def counted(self, *args, **kwargs):  # episodes this process runs outside the campaign's workers
        resets["n"] += 1
        return real_reset(self, *args, **kwargs)

    TwinEnv.reset = counted
    out = Path(tempfile.mkdtemp(prefix="bench_rank_"))
    try:
        t0 = time.perf_counter()
        res = rank_checkpoints(
            paths,
            spec,
            [bag],
            out,
            tracking_uri=uri,
            rule="vsdr",
            promote=False,
            workers=2,
            ood=OODSettings(reference_episodes=10, cache_dir=str(out / "ood_cache")),
        )
        wall = time.perf_counter() - t0
    finally:
        TwinEnv.reset = real_reset
        shutil.rmtree(out, ignore_errors=True)
    asked = len(paths) * len(spec.episodes(TASK))
    executed = res.campaign.executed
    print(f"{len(paths)} checkpoints, spec {len(spec.episodes(TASK))} episodes each ({asked} in all)")
    print(
        f"twinrank rank: {wall:.1f} s wall; environment episodes {executed + resets['n']} "
        f"(campaign {executed}, outside it {resets['n']}); the spec asks for {asked}"
    )
    scored = res.ranking["ood"].notna().sum()
    print(f"OOD scored for {scored}/{len(res.ranking)} checkpoints; mean OOD {res.ranking['ood'].mean():.3f}")


if __name__ == "__main__":
    main()
