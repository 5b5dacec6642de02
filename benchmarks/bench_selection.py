"""Selection: ranking quality against proxy-real success of (a) training loss, (b) nominal sim
success, (c) perturbed sim success, (d) OOD score alone, (e) the combined scores.

Setup (issue 5's benchmark), all on ``reach`` so it runs on a laptop CPU:

* a checkpoint family with a real spread of quality: a BC run (12 checkpoints, epochs 3..36
  on 8 demos: from barely trained to converged) and a PPO+BC run (8 checkpoints, 1k..8k env steps), each registered in a local
  MLflow store;
* proxy-real logs: 20 demonstrator episodes in the proxy-real domain, written through the
  rosbag2 schema (what selection reads);
* proxy-real ground truth: every checkpoint on 80 proxy-real episodes (read only here, to
  score the rankings);
* the ranking job (``rank_checkpoints``): sim success under nominal + 6 single factors +
  combined, 16 episodes each, OOD of the logs in each checkpoint's feature space.

(a) is each checkpoint's BC loss on 10 held-out demonstrations. For (e) every combined rule is
listed, plus the rule that leave-one-checkpoint-out picks from the proxy-real outcomes of the
other checkpoints (an honest estimate of what ``choose_rule`` would do with past validations).
Targets: (e) beats (a)-(d), MMRV <= 0.05, Pearson >= 0.9.

Everything is cached in ``TWINRANK_BENCH_CACHE`` (default ``.bench_cache/selection``):
delete it to retrain.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

TASK = "reach"


def _cache() -> Path:
    p = Path(os.environ.get("TWINRANK_BENCH_CACHE", ".bench_cache/selection"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def train_family(root: Path, uri: str) -> list[str]:
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training

    done = root / "family.txt"
    if done.is_file():
        return done.read_text().split()
    bc = TrainConfig(
        algo="bc",
        task=TASK,
        demos=DemoCfg(episodes=8, seed=1000),
        bc=BCConfig(epochs=36, batch_size=64),
        checkpoint_every=3,
        eval_episodes=10,
        experiment="bench-selection",
        model_name="reach-bench",
    )
    r1 = run_training(bc, root / "bc", tracking_uri=uri, cache_dir=root / "demos")
    ppo = TrainConfig(
        algo="ppo_bc",
        task=TASK,
        demos=DemoCfg(episodes=5, seed=1000),
        total_env_steps=8000,
        checkpoint_every=5,
        eval_episodes=10,
        experiment="bench-selection",
        model_name="reach-bench",
    )
    ppo.ppo.num_envs, ppo.ppo.n_steps = 8, 25
    r2 = run_training(ppo, root / "ppo_bc", tracking_uri=uri, cache_dir=root / "demos")
    paths = [str(r.path) for r in r1.checkpoints + r2.checkpoints]
    done.write_text("\n".join(paths))
    return paths


def train_losses(paths: list[str], root: Path) -> dict[str, float]:
    """BC loss of each checkpoint on 10 held-out demonstrations (the 'training loss' baseline)."""
    from policies.bc import episodes_to_samples
    from policies.checkpoint import load_checkpoint
    from policies.data import iter_episodes
    from policies.demos import collect_demos

    h5 = root / "heldout_demos.h5"
    if not h5.is_file():
        collect_demos(TASK, h5, 10, seed=7000, only_success=True)
    out: dict[str, float] = {}
    for p in paths:
        pol = load_checkpoint(p)
        pol.eval()
        obs, acts = episodes_to_samples(list(iter_episodes(h5, pol.spec.obs_keys)), pol.spec.obs_keys)
        with torch.no_grad():
            out[p] = float(pol.compute_bc_loss(obs, acts))
    return out


def main() -> None:
    from evaluator.run import _label
    from evaluator.spec import EvalSpec, VideoCfg
    from selection.job import OODSettings, rank_checkpoints
    from selection.metrics import mmrv, pearson, regret_at_1
    from selection.proxy_real import ground_truth, record_logs
    from selection.ranking import BASELINES, COMBINED_RULES, Validation, choose_rule, rule_scores

    t0 = time.perf_counter()
    root = _cache()
    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    paths = train_family(root, uri)
    t_train = time.perf_counter() - t0
    bag = root / "proxy_real_logs"
    if not bag.exists():
        record_logs(TASK, bag, episodes=20)
    truth_csv = root / "truth" / "proxy_real_outcomes.csv"
    truth = pd.read_csv(truth_csv) if truth_csv.is_file() else ground_truth(paths, TASK, root / "truth", episodes=80)
    real = dict(zip(truth["checkpoint"], truth["real_success"]))
    losses = train_losses(paths, root)
    spec = EvalSpec(
        name="bench-selection",
        tasks=[TASK],
        conditions=[
            "nominal",
            "object_pose",
            "object_scale",
            "friction",
            "mass",
            "actuation_latency",
            "observation_noise",
            "combined",
        ],
        episodes_per_condition=16,
        video=VideoCfg(enabled=False),
    )
    res = rank_checkpoints(
        paths,
        spec,
        [bag],
        root / "rank",
        tracking_uri=uri,
        rule="vsdr",
        promote=False,
        ood=OODSettings(reference_episodes=10),
        extra_columns={_label(Path(p)): {"train_loss": losses[p]} for p in paths},
    )
    df = res.ranking[res.ranking["checkpoint"].isin(real)].reset_index(drop=True)
    y = np.array([real[c] for c in df["checkpoint"]])
    print(
        f"{len(df)} checkpoints on {TASK}; proxy-real success {y.min():.2f}..{y.max():.2f} "
        f"(mean {y.mean():.2f}); training+data {t_train:.0f} s, total {time.perf_counter() - t0:.0f} s"
    )
    rows = []
    names = {
        "train_loss": "(a) training loss",
        "sim_nominal": "(b) sim nominal",
        "sim_perturbed": "(c) sim perturbed",
        "ood_only": "(d) OOD alone",
    }
    for r in BASELINES + COMBINED_RULES:
        s = rule_scores(df, r).to_numpy(dtype=float)
        rows.append(
            {
                "ranking": names.get(r, f"(e) {r}"),
                "MMRV": mmrv(s, y),
                "Pearson": pearson(s, y),
                "regret@1": regret_at_1(s, y),
            }
        )
    # leave-one-checkpoint-out choice of the combined rule
    picks = []
    for i in range(len(df)):
        keep = np.arange(len(df)) != i
        sub = df[keep].reset_index(drop=True)
        picks.append(choose_rule([Validation(sub, {c: real[c] for c in sub["checkpoint"]}, domain="proxy-real")]).rule)
    chosen = max(set(picks), key=picks.count)
    s = rule_scores(df, chosen).to_numpy(dtype=float)
    rows.append(
        {
            "ranking": f"(e) LOO-chosen: {chosen} ({picks.count(chosen)}/{len(picks)} folds)",
            "MMRV": mmrv(s, y),
            "Pearson": pearson(s, y),
            "regret@1": regret_at_1(s, y),
        }
    )
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 140, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best_base = table.iloc[:4]
    e = table.iloc[-1]
    print(
        f"targets: combined MMRV {e['MMRV']:.3f} (<= 0.05: {'met' if e['MMRV'] <= 0.05 else 'NOT met'}), "
        f"Pearson {e['Pearson']:.3f} (>= 0.9: {'met' if e['Pearson'] >= 0.9 else 'NOT met'}), beats (a)-(d) on MMRV: "
        f"{'yes' if e['MMRV'] < best_base['MMRV'].min() else 'no'}"
    )
    table.to_csv(root / "bench_selection.csv", index=False)


if __name__ == "__main__":
    main()
