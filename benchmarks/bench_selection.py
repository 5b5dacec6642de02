"""Selection fidelity: does the twin rank checkpoints as a reality it does not share would?
Rankings by (a) training loss, (b) nominal sim success, (c) perturbed sim success, (d) OOD score
alone, (e) the combined scores, against two realities.

Setup, on ``reach`` (default) or the mission tasks ``mug_to_sink``, ``box_to_shelf``,
``push_t`` (``TWINRANK_BENCH_TASK``):

* a checkpoint family with a real spread of quality, registered in a local MLflow store:
  ``reach``: a BC run (12 checkpoints, epochs 3..36 on 8 demos: from barely trained to
  converged) and a PPO+BC run (8 checkpoints, 1k..8k env steps); ``mug_to_sink`` and
  ``box_to_shelf``: the default ``twinrank train --algo bc`` run (chunked state policy,
  takeover rounds; 12 checkpoints, epochs 10..200) and one-step discrete BC on its
  demonstrations (3 checkpoints); ``push_t``: the default ``twinrank train --algo bc --task push_t`` run (state policy,
  takeover rounds), epochs 10, 20, 40, ..., 300 (16 checkpoints), against the same-engine reality only (push_t
  reads MuJoCo's model directly, so the second engine cannot run it);
* two realities, each with its own logs (20 demonstrator episodes written through the rosbag2
  schema: what selection reads) and its own ground truth (every checkpoint on 80 episodes, read
  only here, to score the rankings):
  (i) ``proxy-real``: the twin's own engine under the domain's shifted conditions;
  (ii) ``proxy-real (pybullet)``: a second engine (twin/bullet.py: its own robot model, motors,
  IK, contacts and renderer) under the same conditions;
* the ranking job (``rank_checkpoints``): sim success under nominal + 6 single factors +
  combined, 16 episodes each (one campaign for both realities), OOD of each reality's logs in
  each checkpoint's feature space.

(a) is each checkpoint's BC loss on 10 held-out demonstrations. For (e) every combined rule is
listed, plus the rule that leave-one-checkpoint-out picks from the outcomes of the other
checkpoints. Per reality: MMRV (SimplerEnv's convention), Pearson, Spearman and regret@1, each
with a 95 % percentile-bootstrap interval over checkpoints; each checkpoint's sim and reality
success side by side; a scatter per reality logged to MLflow (experiment ``bench-selection``).
Targets: (e) beats (a)-(d), MMRV <= 0.05, Pearson >= 0.9. Anchors printed beside ours:
SimplerEnv visual matching and validation-loss ranking (from its paper).

Everything is cached in ``TWINRANK_BENCH_CACHE`` (default ``.bench_cache/selection``, or
``.bench_cache/selection_quick``): delete it to retrain. ``TWINRANK_BENCH_QUICK=1`` (or
``python -m benchmarks.bench_selection --quick``): 20 ground-truth episodes per checkpoint and
6 per ranking condition, for a check that the pipeline runs, not for its figures;
``TWINRANK_BENCH_EPISODES=50,8`` sets both (reality episodes per checkpoint, sim episodes per
condition).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from policies.train_config import CHUNKED_BC_TASKS
from selection.fidelity import fidelity_metrics, fidelity_scatter, no_verdict_reason

#: the task of the family (TWINRANK_BENCH_TASK): reach, mug_to_sink, box_to_shelf or push_t
TASK = os.environ.get("TWINRANK_BENCH_TASK", "reach")


#: per task: (BC run, PPO+BC run) settings of the family. mug_to_sink and box_to_shelf
#: (CHUNKED_BC_TASKS) use the chunked state policy's default run instead (_chunked_family).
#: Before it, on mug_to_sink: one-step discrete BC from 80 demos stayed below 0.3, and PPO+BC
#: reached 0.8 once in bench_training but <= 0.33 up to 100k steps in this family's run
#: (2026-12-05)
FAMILIES = {
    "reach": (
        {"demos": 8, "epochs": 36, "every": 3},
        {"demos": 5, "steps": 8000, "every": 5, "ppo": {}},
    ),
}
ENGINES = ("mujoco", "pybullet")
#: SimplerEnv (Li et al. 2024), visual matching vs real Google Robot evaluations, and its
#: validation-loss baseline: (MMRV, Pearson)
ANCHORS = (
    ("SimplerEnv visual matching, pick coke can", "0.031", "0.975"),
    ("SimplerEnv visual matching, move near", "0.111", "0.856"),
    ("SimplerEnv visual matching, open/close drawer", "0.000-0.123", "0.771-0.983"),
    ("validation-loss ranking (SimplerEnv)", "0.412", "0.464"),
)


def _quick() -> bool:
    return os.environ.get("TWINRANK_BENCH_QUICK", "") not in ("", "0")


def _cache() -> Path:
    default = ".bench_cache/selection" + ("" if TASK == "reach" else f"_{TASK}") + ("_quick" if _quick() else "")
    p = Path(os.environ.get("TWINRANK_BENCH_CACHE", default))
    p.mkdir(parents=True, exist_ok=True)
    return p


def train_family(root: Path, uri: str) -> list[str]:
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training

    done = root / "family.txt"
    if done.is_file():
        return done.read_text().split()
    if TASK == "push_t":
        return _pusht_family(root, uri, done)
    if TASK in CHUNKED_BC_TASKS:
        return _chunked_family(root, uri, done)
    if TASK not in FAMILIES:
        raise SystemExit(
            f"bench_selection: no family for task {TASK!r}; TWINRANK_BENCH_TASK: {', '.join([*FAMILIES, *CHUNKED_BC_TASKS, 'push_t'])}"
        )
    fb, fp = FAMILIES[TASK]
    bc = TrainConfig(
        algo="bc",
        task=TASK,
        control_mode="discrete",
        demos=DemoCfg(episodes=fb["demos"], seed=1000),
        bc=BCConfig(epochs=fb["epochs"], batch_size=64),
        checkpoint_every=fb["every"],
        eval_episodes=10,
        experiment="bench-selection",
        model_name=f"{TASK}-bench",
    )
    r1 = run_training(bc, root / "bc", tracking_uri=uri, cache_dir=root / "demos")
    ppo = TrainConfig(
        algo="ppo_bc",
        task=TASK,
        control_mode="discrete",
        demos=DemoCfg(episodes=fp["demos"], seed=1000),
        total_env_steps=fp["steps"],
        checkpoint_every=fp["every"],
        eval_episodes=10,
        experiment="bench-selection",
        model_name=f"{TASK}-bench",
    )
    ppo.ppo.num_envs, ppo.ppo.n_steps = 8, 25
    for k, v in fp["ppo"].items():
        setattr(ppo.ppo, k, v)
    r2 = run_training(ppo, root / "ppo_bc", tracking_uri=uri, cache_dir=root / "demos")
    paths = [str(r.path) for r in r1.checkpoints + r2.checkpoints]
    done.write_text("\n".join(paths))
    return paths


def _chunked_family(root: Path, uri: str, done: Path) -> list[str]:
    """A task trained by default with the chunked state policy (CHUNKED_BC_TASKS): the default
    ``twinrank train --algo bc`` run (takeover rounds), epochs 10, 30, 50, 60, 70, 80, 100,
    120, ..., 200 (12 checkpoints), and one-step discrete BC on the same 200 demonstrations,
    epochs 20, 40, 60 (3 checkpoints: the kind that cannot clone the expert's hold)."""
    from policies.train import default_config, run_training, with_overrides

    cfg = with_overrides(default_config("bc", TASK), experiment="bench-selection", model_name=f"{TASK}-bench")
    res = run_training(cfg, root / "bc_chunk", tracking_uri=uri, cache_dir=root / "demos")
    keep = {10, 30, 50, 60, 70, 80} | set(range(100, 201, 20))
    paths = [str(r.path) for r in res.checkpoints if r.step in keep]
    one = with_overrides(
        cfg,
        policy="mlp",
        policy_config={},
        checkpoint_every=20,
        **{"demos.takeover_rounds": 0, "bc.epochs": 60, "bc.lr_schedule": "constant"},
    )
    res = run_training(one, root / "bc_one_step", tracking_uri=uri, cache_dir=root / "demos")
    paths += [str(r.path) for r in res.checkpoints]
    done.write_text("\n".join(paths))
    return paths


def _pusht_family(root: Path, uri: str, done: Path) -> list[str]:
    """push_t's family: the default ``twinrank train --algo bc --task push_t`` run (BC and two
    takeover rounds): epochs 10, 20, 40, ..., 300 (16 checkpoints)."""
    from policies.train import default_config, run_training, with_overrides

    cfg = with_overrides(default_config("bc", "push_t"), experiment="bench-selection", model_name="push_t-bench")
    res = run_training(cfg, root / "bc", tracking_uri=uri, cache_dir=root / "demos")
    paths = [str(r.path) for r in res.checkpoints if r.step == 10 or r.step % 20 == 0]
    done.write_text("\n".join(paths))
    return paths


def train_losses(paths: list[str], root: Path) -> dict[str, float]:
    """BC loss of each checkpoint on 10 held-out demonstrations (the 'training loss' baseline)."""
    from policies.bc import policy_samples
    from policies.checkpoint import load_checkpoint
    from policies.data import iter_episodes
    from policies.demos import collect_demos
    from policies.train_config import default_control_mode

    h5 = root / "heldout_demos.h5"
    if not h5.is_file():
        collect_demos(TASK, h5, 10, control_mode=default_control_mode(TASK), seed=7000, only_success=True)
    out: dict[str, float] = {}
    for p in paths:
        pol = load_checkpoint(p)
        pol.eval()
        obs, acts = policy_samples(pol, list(iter_episodes(h5, pol.spec.obs_keys)))
        with torch.no_grad():
            out[p] = float(pol.compute_bc_loss(obs, acts))
    return out


def _metrics(s: np.ndarray, y: np.ndarray) -> dict[str, str]:
    """MMRV, Pearson, Spearman, regret@1, each 'value [lo, hi]' (95 % bootstrap over checkpoints)."""
    out: dict[str, str] = {}
    for name, est in fidelity_metrics(s, y).items():
        out[name] = str(est)
        out[f"_{name}"] = est.value  # type: ignore[assignment]
    return out


def _calibrated_success(paths: list[str], bag: Path, out: Path, eps: int, label: str) -> dict[str, float] | str | None:
    """Each checkpoint's twin success under the twin calibrated to ``bag``'s logs (latency, mass,
    friction; cached in ``out``), None when calibration identified nothing (the calibrated
    twin is then the nominal twin), or why calibration could not run on these logs."""
    import yaml

    from evaluator.run import evaluate
    from evaluator.spec import EvalSpec, VideoCfg
    from selection.calibration import CalibrationError, calibrate
    from selection.realdata import read_bag

    suite_path = out / "calibrated_suite.yaml"
    if not suite_path.is_file():
        try:
            res = calibrate(read_bag(bag, images=False)[:10], TASK, max_evals=60)
        except CalibrationError as exc:
            return f"calibration not run: {str(exc)[:200]}"
        print(
            f"calibration on {label}'s logs ({res.episodes} episodes, {res.evaluations} replays, {res.wall_s:.0f} s): "
            f"residual {res.residual_before * 1000:.2f} -> {res.residual_after * 1000:.2f} mm; "
            + "; ".join(e.text() for e in res.estimates.values())
        )
        out.mkdir(parents=True, exist_ok=True)
        suite_path.write_text(res.suite().to_yaml())
    if not (yaml.safe_load(suite_path.read_text()) or {}).get("factors"):
        return None
    spec = EvalSpec(
        name="bench-calibrated",
        tasks=[TASK],
        suite=str(suite_path),
        conditions=["combined"],
        episodes_per_condition=eps,
        video=VideoCfg(enabled=False),
    )
    campaign = evaluate(paths, spec, out / "campaign" / f"{eps}_per_condition", videos=False, plots=False)
    return {s.label: float(s.overall["success_rate"]) for s in campaign.checkpoints if s.status == "ok"}


def main() -> None:
    from evaluator.run import checkpoint_label
    from evaluator.spec import EvalSpec, VideoCfg
    from selection.job import OODSettings, rank_checkpoints
    from selection.proxy_real import ProxyRealDomain, ground_truth, record_logs
    from selection.ranking import BASELINES, COMBINED_RULES, Validation, choose_rule, rule_scores
    from twin.tasks import get_task_class

    if "--quick" in sys.argv[1:]:
        os.environ["TWINRANK_BENCH_QUICK"] = "1"
    quick = _quick()
    truth_eps, cond_eps = (20, 6) if quick else (80, 16)
    if os.environ.get("TWINRANK_BENCH_EPISODES"):  # "truth,condition", e.g. "50,8"
        truth_eps, cond_eps = (int(x) for x in os.environ["TWINRANK_BENCH_EPISODES"].split(","))
    t0 = time.perf_counter()
    root = _cache()
    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    paths = train_family(root, uri)
    t_train = time.perf_counter() - t0
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
        episodes_per_condition=cond_eps,
        video=VideoCfg(enabled=False),
    )
    names = {
        "train_loss": "(a) training loss",
        "sim_nominal": "(b) sim nominal",
        "sim_perturbed": "(c) sim perturbed",
        "ood_only": "(d) OOD alone",
    }
    reals: dict[str, dict[str, float]] = {}
    frames: dict[str, pd.DataFrame] = {}
    summary: list[str] = []
    for engine in ENGINES:
        if engine not in get_task_class(TASK).engines:
            line = f"proxy-real ({engine}): not measured; {TASK} does not run on {engine} (README, second engine)"
            summary.append(line)
            print("\n" + line)
            continue
        dom = ProxyRealDomain.load().with_engine(engine)
        sub = "" if engine == "mujoco" else f"_{engine}"
        bag = root / f"proxy_real_logs{sub}"
        if not bag.exists():
            record_logs(TASK, bag, domain=dom, episodes=20)
        # one folder per episode count (a campaign folder holds one evaluation spec)
        truth_dir = root / f"truth{sub}" / f"{truth_eps}_episodes"
        truth_csv = truth_dir / "proxy_real_outcomes.csv"
        t1 = time.perf_counter()
        cached = pd.read_csv(truth_csv) if truth_csv.is_file() else None
        labels = {checkpoint_label(Path(p)) for p in paths}
        if cached is not None and (cached["episodes"] == truth_eps).all() and labels <= set(cached["checkpoint"]):
            truth = cached
        else:
            truth = ground_truth(paths, TASK, truth_dir, domain=dom, episodes=truth_eps)
        t_truth = time.perf_counter() - t1
        real = dict(zip(truth["checkpoint"], truth["real_success"], strict=True))
        res = rank_checkpoints(
            paths,
            spec,
            [bag],
            root / f"rank{sub}",
            tracking_uri=uri,
            rule="vsdr",
            promote=False,
            ood=OODSettings(reference_episodes=10),
            campaign_dir=root / "campaign" / f"{cond_eps}_per_condition",
            extra_columns={checkpoint_label(Path(p)): {"train_loss": losses[p]} for p in paths},
        )
        df = res.ranking[res.ranking["checkpoint"].isin(real)].reset_index(drop=True)
        y = np.array([real[c] for c in df["checkpoint"]])
        reals[dom.label], frames[dom.label] = real, df
        print(
            f"\n--- against {dom.label}: {len(df)} checkpoints on {TASK}; success {y.min():.2f}..{y.max():.2f} "
            f"(mean {y.mean():.2f}, {truth_eps} episodes each, ground truth {t_truth:.0f} s"
            f"{' (cached)' if t_truth < 1 else ''})"
        )
        # a reality that scored every checkpoint alike, or whose best and worst checkpoints are
        # not told apart (95 % Wilson intervals overlap), gives no verdict on the targets
        noise = no_verdict_reason(y, truth_eps)
        if np.ptp(y) == 0:
            line = f"{dom.label}: {noise}; targets not evaluated"
            summary.append(line)
            print("targets: " + line)
            continue
        rows = []
        for r in BASELINES + COMBINED_RULES:
            rows.append({"ranking": names.get(r, f"(e) {r}"), **_metrics(rule_scores(df, r).to_numpy(dtype=float), y)})
        # (f) the twin calibrated to this reality's logs (twinrank calibrate), nominal otherwise
        cal = _calibrated_success(paths, bag, root / f"calibrated{sub}", cond_eps, dom.label)
        if cal is None:
            calibrated = "calibration identified nothing: the calibrated twin is the nominal twin"
        elif isinstance(cal, str):
            calibrated = cal
        else:
            m_cal = _metrics(df["checkpoint"].map(cal).to_numpy(dtype=float), y)
            rows.append({"ranking": "(f) sim calibrated", **m_cal})
            m_nom = rows[1]
            calibrated = (
                f"calibrated twin MMRV {m_cal['_MMRV']:.3f} / r {m_cal['_Pearson']:.3f} vs uncalibrated (nominal) "
                f"{m_nom['_MMRV']:.3f} / {m_nom['_Pearson']:.3f}: "
                f"{'no worse' if m_cal['_MMRV'] <= m_nom['_MMRV'] else 'WORSE'} on MMRV"
            )
        picks = []
        for i in range(len(df)):
            keep = np.arange(len(df)) != i
            part = df[keep].reset_index(drop=True)
            val = Validation(part, {c: real[c] for c in part["checkpoint"]}, domain=dom.label)
            picks.append(choose_rule([val]).rule)
        chosen = max(set(picks), key=picks.count)
        rows.append(
            {
                "ranking": f"(e) LOO-chosen: {chosen} ({picks.count(chosen)}/{len(picks)} folds)",
                **_metrics(rule_scores(df, chosen).to_numpy(dtype=float), y),
            }
        )
        table = pd.DataFrame(rows)
        shown = table[[c for c in table.columns if not c.startswith("_")]]
        with pd.option_context("display.width", 160, "display.max_colwidth", 60):
            print(shown.to_string(index=False))
        e = table.iloc[-1]
        base = table.iloc[:4]
        mm, pe = float(e["_MMRV"]), float(e["_Pearson"])
        if noise:
            line = f"{dom.label}: combined (LOO-chosen) MMRV {mm:.3f}, Pearson {pe:.3f}; targets not evaluated: {noise}"
        else:
            line = (
                f"{dom.label}: combined (LOO-chosen) MMRV {mm:.3f} (<= 0.05: "
                f"{'met' if mm <= 0.05 else f'NOT met, by {mm - 0.05:.3f}'}), Pearson {pe:.3f} (>= 0.9: "
                f"{'met' if pe >= 0.9 else f'NOT met, by {0.9 - pe:.3f}'}), beats (a)-(d) on MMRV: "
                f"{'yes' if mm < base['_MMRV'].min() else 'no'}"
            )
        line += f"; {calibrated}"
        summary.append(line)
        print("targets: " + line)
        shown.to_csv(root / f"bench_selection{sub}.csv", index=False)
    # each checkpoint's sim and reality success side by side
    df = frames[next(iter(frames))]
    side = pd.DataFrame(
        {
            "checkpoint": df["checkpoint"].map(lambda c: str(c)[-28:]),
            "sim nominal": df["sim_nominal"].map("{:.2f}".format),
            "sim perturbed": df["sim_perturbed"].map("{:.2f}".format),
            **{label: df["checkpoint"].map(lambda c, r=r: f"{r[c]:.2f}") for label, r in reals.items()},
        }
    )
    print(f"\n--- each checkpoint, twin vs realities ({cond_eps} sim episodes per condition, {truth_eps} per reality)")
    print(side.to_string(index=False))
    print("\nanchors (published, not ours): ranking vs real robot, MMRV / Pearson")
    for name, m, r in ANCHORS:
        print(f"  {name}: {m} / {r}")
    top = int(np.argmax(df["score"].to_numpy(dtype=float)))
    ys = {label: [r[c] for c in df["checkpoint"]] for label, r in reals.items()}
    plot = fidelity_scatter(df["sim_perturbed"], ys, top, TASK, root / f"fidelity_{TASK}.png")
    _log_mlflow(uri, plot, root, summary, quick)
    print(f"\nscatter: {plot}; total {time.perf_counter() - t0:.0f} s (training+data {t_train:.0f} s)")
    for line in summary:
        print("targets: " + line)


def _log_mlflow(uri: str, plot: Path, root: Path, summary: list[str], quick: bool) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bench-selection")
    exp_id = exp.experiment_id if exp else client.create_experiment("bench-selection")
    run = client.create_run(exp_id, run_name=f"fidelity-{TASK}{'-quick' if quick else ''}")
    rid = run.info.run_id
    client.log_artifact(rid, str(plot))
    for csv in sorted(root.glob("bench_selection*.csv")):
        client.log_artifact(rid, str(csv))
    client.set_tag(rid, "twinrank.fidelity", " | ".join(summary)[:4900])
    client.set_terminated(rid)


if __name__ == "__main__":
    main()
