"""Evaluator: paired design, statistics, persistence/resume, worker loss, failures, reports.

Real worker processes, real MuJoCo, real checkpoints (two random MLPs and one trained a
little with BC on scripted `reach` demonstrations, so success rates differ).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from evaluator import (
    COMBINED,
    NOMINAL,
    CheckpointResolveError,
    EvalSpec,
    EvalSpecError,
    InlineExecutor,
    LocalExecutor,
    ResultStoreError,
    checkpoint_id,
    evaluate,
    load_spec,
    paired_drop,
    policy_ref,
    resolve_checkpoint,
    wilson_interval,
)
from evaluator.results import EPISODES_FILE, mcnemar_exact_p
from evaluator.worker import KILL_HOOK_ENV
from policies import CallablePolicy, ObsSpec, PolicySpec, make_policy, save_checkpoint
from twin.env import TwinEnv
from twin.perturbations import load_suite
from twin.tasks import get_task_class

torch.set_num_threads(1)

CONDITIONS = [NOMINAL, "object_pose", "light_intensity", COMBINED]
MAX_STEPS = get_task_class("reach").default_cfg().terminations.max_steps  # 25


def _spec(**kw) -> EvalSpec:
    base = dict(
        name="test", tasks=["reach"], conditions=CONDITIONS, episodes_per_condition=3, seed_start=500, batch_size=4
    )
    base.update(kw)
    return EvalSpec(**base).validate()


def _outcomes(result) -> list[tuple]:
    return [r.outcome() for r in result.episodes]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """rand_a, rand_b (random MLPs), bc (BC on 12 scripted demos), corrupt, missing."""
    from policies.bc import BCConfig, episodes_to_samples, train_bc
    from policies.data import iter_episodes
    from policies.demos import collect_demos

    root = tmp_path_factory.mktemp("ckpts")
    env = TwinEnv("reach")
    spec = PolicySpec.from_env(env, ["state"])
    env.close()
    out = {}
    for i, name in enumerate(["rand_a", "rand_b"]):
        torch.manual_seed(i)
        out[name] = save_checkpoint(make_policy("mlp", {"hidden_sizes": [32, 32]}, spec), root / name, training_step=i)
    demos = collect_demos("reach", root / "demos.h5", 12, seed=100)
    torch.manual_seed(0)
    bc = make_policy("mlp", {"hidden_sizes": [64, 64]}, spec)
    obs, acts = episodes_to_samples(list(iter_episodes(demos, ["state"])), ["state"])
    train_bc(bc, obs, acts, BCConfig(epochs=60, batch_size=64))
    out["bc"] = save_checkpoint(bc, root / "bc", training_step=60)
    corrupt = root / "corrupt"
    shutil.copytree(out["rand_a"], corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    out["corrupt"] = corrupt
    out["missing"] = root / "does_not_exist"
    return out


@pytest.fixture(scope="module")
def executor():
    ex = LocalExecutor(workers=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def reference(ckpts, executor, tmp_path_factory):
    """The uninterrupted campaign every other run is compared with."""
    out = tmp_path_factory.mktemp("reference")
    events = []
    result = evaluate(
        [ckpts[k] for k in ("rand_a", "rand_b", "bc", "corrupt", "missing")],
        _spec(),
        out,
        executor=executor,
        progress=events.append,
    )
    return result, events


# ---------------------------------------------------------------------------------------------
# spec: paired design
# ---------------------------------------------------------------------------------------------


def test_spec_conditions_and_paired_episode_list(tmp_path):
    suite = load_suite("default", task="reach")
    spec = EvalSpec(tasks=["reach"], episodes_per_condition=3, seed_start=7).validate()
    # default conditions: nominal, every factor alone, combined
    assert spec.condition_names("reach") == [NOMINAL, *suite.factor_names(), COMBINED]
    eps = spec.episodes()
    assert len(eps) == 3 * (len(suite.factor_names()) + 2)
    assert [(e.condition, e.seed) for e in eps[:4]] == [
        (NOMINAL, 7),
        (NOMINAL, 8),
        (NOMINAL, 9),
        (suite.factor_names()[0], 7),
    ]
    by = {(e.condition, e.seed): e.perturbation for e in eps}
    assert by[(NOMINAL, 8)].values == {}
    assert by[("friction", 8)].to_dict() == suite.only("friction").sample(8).to_dict()
    assert list(by[("friction", 8)].values) == ["friction"]
    assert by[(COMBINED, 9)].to_dict() == suite.sample(9).to_dict()
    assert set(by[(COMBINED, 9)].values) == set(suite.factor_names())
    # the list is a pure function of the spec: identical from a YAML round trip, in order
    spec.to_yaml(tmp_path / "spec.yaml")
    again = EvalSpec.from_yaml(tmp_path / "spec.yaml")
    assert [(e.condition, e.seed, e.perturbation.to_dict()) for e in again.episodes()] == [
        (e.condition, e.seed, e.perturbation.to_dict()) for e in eps
    ]
    assert again.digest() == spec.digest()
    # explicit seeds and a chosen condition list; units are consecutive chunks of batch_size
    s2 = EvalSpec(tasks=["reach"], conditions=["nominal", "mass", "combined"], seeds=[5, 3, 11], batch_size=4)
    s2.validate()
    assert [(e.condition, e.seed) for e in s2.episodes()] == [
        (c, s) for c in ["nominal", "mass", "combined"] for s in [5, 3, 11]
    ]
    assert [len(u) for u in s2.units()] == [4, 4, 1]
    assert s2.digest() != s2.replace(seeds=[5, 3, 12]).digest()
    assert s2.digest() == s2.replace(video={"enabled": False}).digest()  # videos do not change results
    assert s2.digest() != s2.replace(batch_size=3).digest()
    # the built-in spec
    d = load_spec("default")
    assert d.tasks == [] and d.conditions == "all" and d.covers_task("mug_to_sink")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"conditions": ["nominal", "gravity"]}, "unknown condition 'gravity'"),
        ({"seeds": [1, 2, 2]}, "more than once"),
        ({"seeds": [1, 2], "episodes_per_condition": 3}, "episodes_per_condition = 3"),
        ({"tasks": ["no_such_task"]}, "no_such_task"),
        ({"batch_size": 0}, "batch_size"),
        ({"video": {"width": 161}}, "even"),
        ({"bogus": 1}, "unknown field"),
        ({"suite": "nope_suite"}, "unknown perturbation suite"),
    ],
)
def test_spec_validation_errors(changes, words):
    data = {"tasks": ["reach"], **changes}
    with pytest.raises(EvalSpecError, match=words):
        EvalSpec.from_dict(data)


def test_checkpoint_refs(ckpts, tmp_path):
    assert resolve_checkpoint(ckpts["bc"] / "manifest.json") == Path(ckpts["bc"]).resolve()
    with pytest.raises(CheckpointResolveError, match="MLflow"):
        resolve_checkpoint("models:/reach-bc/3")
    # an unresolvable reference fails that checkpoint, not the campaign
    result = evaluate(["models:/reach-bc/3"], _spec(), tmp_path / "uri", executor="inline", plots=False)
    assert [(s.status, s.label) for s in result.checkpoints] == [("failed", "models:/reach-bc/3")]
    assert "MLflow" in result.checkpoints[0].error and result.episodes == []
    cid = checkpoint_id(ckpts["bc"])
    assert len(cid) == 12 and cid == checkpoint_id(str(ckpts["bc"]))
    assert checkpoint_id(ckpts["corrupt"]) != checkpoint_id(ckpts["rand_a"])
    assert checkpoint_id(ckpts["missing"]).startswith("missing-")


# ---------------------------------------------------------------------------------------------
# statistics (hand-checked)
# ---------------------------------------------------------------------------------------------


def test_wilson_interval_hand_checked():
    # 7/10: p = .7, z^2/n = .38415, centre = .892073/1.38415 = .64449,
    # half = 1.96 * sqrt(.021 + .0096037) / 1.38415 = .24772
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.39677, abs=1e-5) and hi == pytest.approx(0.89220, abs=1e-5)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(1, 2)  # symmetric around 1/2
    assert lo + hi == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_paired_drop_hand_checked():
    base = {1: True, 2: True, 3: False, 4: True, 9: True}
    other = {1: False, 2: True, 3: False, 4: False}  # seed 9 has no pair: left out
    d = paired_drop(base, other)
    # differences [1, 0, 0, 1]: mean .5, sd sqrt(1/3), t(.975, 3) = 3.182446
    half = 3.182446 * math.sqrt(1 / 3) / 2
    assert d["n"] == 4 and d["mean"] == 0.5
    assert d["ci_low"] == pytest.approx(0.5 - half, abs=1e-5) and d["ci_high"] == 1.0  # clipped
    assert (d["base_only"], d["other_only"]) == (2, 0)
    assert d["mcnemar_p"] == pytest.approx(0.5)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert paired_drop({}, {})["n"] == 0


# ---------------------------------------------------------------------------------------------
# the campaign
# ---------------------------------------------------------------------------------------------


def test_campaign_paired_results_and_failed_checkpoints(reference, ckpts):
    result, events = reference
    spec = result.spec
    by_label = {s.label: s for s in result.checkpoints}
    # corrupt and missing checkpoints fail with the loader's reason; the others finish
    assert by_label["corrupt"].status == "failed" and "sha256" in by_label["corrupt"].error
    assert "truncated" in by_label["corrupt"].error
    assert by_label["does_not_exist"].status == "failed"
    assert "no such checkpoint" in by_label["does_not_exist"].error
    assert [e.label for e in events if e.kind == "checkpoint_failed"] == ["corrupt", "does_not_exist"]
    ok = [by_label[k] for k in ("rand_a", "rand_b", "bc")]
    assert all(s.status == "ok" and s.episodes_done == s.episodes_expected == 12 for s in ok)
    # paired design: every checkpoint ran exactly the spec's (condition, seed) list, in order
    want = [(e.condition, e.seed) for e in spec.episodes("reach")]
    assert len(want) == 12 and {c for c, _ in want} == set(CONDITIONS)
    for s in ok:
        assert [(r.condition, r.seed) for r in result.episodes_of(s.checkpoint_id)] == want
    assert result.executed == 36 and result.skipped == 0 and result.worker_restarts == 0
    # the workers report their time and the part of it spent in physics stepping
    assert 0.0 < result.physics_s < result.worker_unit_s and 0.0 < result.physics_share < 1.0
    campaign = json.loads(result.eval_info_path.read_text())["campaign"]
    assert campaign["physics_share"] == pytest.approx(result.physics_share)
    # the BC checkpoint is better than the random ones
    assert by_label["bc"].overall["success_rate"] > max(
        by_label["rand_a"].overall["success_rate"], by_label["rand_b"].overall["success_rate"]
    )
    for s in ok:
        for c in CONDITIONS:
            st = s.per_condition[c]
            rs = [r for r in result.episodes_of(s.checkpoint_id) if r.condition == c]
            k = sum(r.success for r in rs)
            assert (st["n"], st["successes"]) == (3, k)
            assert (st["ci_low"], st["ci_high"]) == pytest.approx(wilson_interval(k, 3))
        assert set(s.paired_drop) == set(CONDITIONS) - {NOMINAL}
        nominal = {r.seed: r.success for r in result.episodes_of(s.checkpoint_id) if r.condition == NOMINAL}
        for c, d in s.paired_drop.items():
            other = {r.seed: r.success for r in result.episodes_of(s.checkpoint_id) if r.condition == c}
            assert d["n"] == 3
            assert d["mean"] == pytest.approx(np.mean([nominal[x] - other[x] for x in nominal]))
        for r in result.episodes_of(s.checkpoint_id):
            assert r.success == (r.failure_reason == "")
            assert r.failure_reason in ("", "timeout", "physics_unstable")
            assert 1 <= r.length <= MAX_STEPS and math.isfinite(r.ret)
            assert "hover_distance" in r.final_info
    assert "Success/nominal" in by_label["bc"].metrics() and "Overall/success" in by_label["bc"].metrics()
    assert "paired_drop/combined" in by_label["bc"].metrics()


def test_campaign_files(reference):
    result, _ = reference
    out = result.out_dir
    lines = (out / EPISODES_FILE).read_text().splitlines()
    assert len(lines) == 36
    info = json.loads(result.eval_info_path.read_text())
    assert info["spec_digest"] == result.spec.digest()
    assert len(info["per_episode"]) == 36
    ep0 = info["per_episode"][0]
    for key in ("checkpoint_id", "checkpoint", "condition", "seed", "success", "return", "length", "failure_reason"):
        assert key in ep0
    cks = {c["label"]: c for c in info["checkpoints"]}
    assert cks["corrupt"]["status"] == "failed" and cks["corrupt"]["error"]
    assert set(cks["bc"]["per_condition"]) == set(CONDITIONS)
    assert cks["bc"]["per_condition"]["nominal"]["ci_low"] <= cks["bc"]["per_condition"]["nominal"]["success_rate"]
    assert info["aggregated"]["ranking"][0]["checkpoint"] == "bc"
    assert sorted(info["aggregated"]["failed_checkpoints"]) == sorted([s.checkpoint_id for s in result.failed])
    eps = pd.read_parquet(result.episodes_parquet)
    assert len(eps) == 36 and eps["success"].dtype == bool
    assert set(eps["condition"]) == set(CONDITIONS)
    bc = result.summary("bc")
    sub = eps[eps["checkpoint_id"] == bc.checkpoint_id]
    assert sub["success"].mean() == pytest.approx(bc.overall["success_rate"])
    conds = pd.read_parquet(result.conditions_parquet)
    assert len(conds) == 3 * len(CONDITIONS)
    row = conds[(conds["checkpoint"] == "bc") & (conds["condition"] == "combined")].iloc[0]
    assert row["success_rate"] == bc.per_condition["combined"]["success_rate"]
    assert row["paired_drop"] == pytest.approx(bc.paired_drop["combined"]["mean"])
    assert result.plot_path is not None and result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_videos_of_a_success_and_a_failure(reference):
    import imageio.v3 as iio

    result, _ = reference
    bc = result.summary("bc")
    assert 0 < bc.overall["successes"] < bc.overall["n"]
    tags = sorted(v["tag"] for v in bc.videos)
    assert tags in (["failure", "success"], ["failure", "success", "worst_failure"]), tags
    for v in bc.videos:
        path = Path(v["path"])
        assert path.is_file() and path.suffix == "." + v["format"] and v["format"] in ("mp4", "gif")
        assert v["consistent"] is True  # the re-run reproduced the stored episode
        stored = next(
            r for r in result.episodes_of(bc.checkpoint_id) if (r.condition, r.seed) == (v["condition"], v["seed"])
        )
        assert stored.success == (v["tag"] == "success")
        if v["tag"] == "worst_failure":
            assert v["condition"] == bc.worst_condition()
        frames = iio.imread(path, index=None)
        assert frames.shape[1:3] == (240, 320)
        # one frame after reset and one per step (Pillow merges identical consecutive GIF frames)
        if v["format"] == "mp4":
            assert frames.shape[0] == stored.length + 1
        else:
            assert 2 <= frames.shape[0] <= stored.length + 1
    assert path in result.videos
    rand = result.summary("rand_a")
    if rand.overall["successes"] == 0:
        assert [v["tag"] for v in rand.videos][:1] == ["failure"] and "success" not in {v["tag"] for v in rand.videos}


def test_same_spec_twice_gives_identical_episodes(reference, ckpts, executor, tmp_path):
    ref, _ = reference
    # warm workers (envs and policies kept from the reference campaign) reproduce it exactly
    again = evaluate([ckpts["rand_a"]], _spec(), tmp_path / "again", executor=executor, videos=False, plots=False)
    assert again.executed == 12
    assert _outcomes(again) == _reference_outcomes(ref, ["rand_a"])
    # the in-process executor runs the same code: same results
    inline = evaluate([ckpts["bc"]], _spec(), tmp_path / "inline", executor="inline", videos=False, plots=False)
    assert _outcomes(inline) == _reference_outcomes(ref, ["bc"])
    # a campaign directory belongs to one spec
    with pytest.raises(ResultStoreError, match="another evaluation spec"):
        evaluate([ckpts["bc"]], _spec(seed_start=900), tmp_path / "again", executor=executor)


def _reference_outcomes(ref, labels) -> list[tuple]:
    ids = [ref.summary(label).checkpoint_id for label in labels]
    return [o for cid in ids for o in _outcomes(ref) if o[0][0] == cid]


class _Stop(Exception):
    pass


def test_interrupted_campaign_resumes_without_rerunning(reference, ckpts, executor, tmp_path):
    ref, _ = reference
    out = tmp_path / "resume"
    refs = [ckpts[k] for k in ("rand_a", "bc")]

    def stop_after(n):
        def cb(ev):
            if ev.kind == "episode" and ev.done >= n:
                raise _Stop()

        return cb

    with pytest.raises(_Stop):
        evaluate(refs, _spec(), out, executor=executor, progress=stop_after(7), videos=False)
    lines = (out / EPISODES_FILE).read_text().splitlines()
    assert len(lines) == 7
    done_before = {(d["checkpoint_id"], d["condition"], d["seed"]) for d in map(json.loads, lines)}
    with open(out / EPISODES_FILE, "a") as f:  # a line torn by a crash while writing
        f.write('{"checkpoint_id": "abc", "task": "re')
    ran = []
    resumed = evaluate(
        refs,
        _spec(),
        out,
        executor=executor,
        videos=False,
        progress=lambda ev: ev.kind == "episode" and ran.append(ev.episode),
    )
    assert resumed.skipped == 7 and resumed.executed == 24 - 7 == len(ran)
    assert not done_before & {(r.checkpoint_id, r.condition, r.seed) for r in ran}  # nothing re-run
    want = _reference_outcomes(ref, ["rand_a", "bc"])
    assert _outcomes(resumed) == want
    assert len((out / EPISODES_FILE).read_text().splitlines()) == 24
    final = evaluate(refs, _spec(), out, executor=executor, videos=False, plots=False)
    assert final.executed == 0 and final.skipped == 24 and _outcomes(final) == want


def test_worker_killed_mid_episode_is_rerun(reference, ckpts, tmp_path, monkeypatch):
    ref, _ = reference
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK_ENV, f"after=6,once={marker}")
    events = []
    with LocalExecutor(workers=2) as ex:
        result = evaluate(
            [ckpts[k] for k in ("rand_b", "bc")],
            _spec(),
            tmp_path / "kill",
            executor=ex,
            progress=events.append,
            videos=False,
            plots=False,
        )
    assert marker.is_file()  # a worker SIGKILLed itself mid-episode
    lost = [e for e in events if e.kind == "worker_lost"]
    assert len(lost) == 1 and result.worker_restarts == 1
    assert "exit code -9" in lost[0].message and "re-running" in lost[0].message
    assert lost[0].worker_pid == int(marker.read_text())
    assert all(s.status == "ok" for s in result.checkpoints)
    assert result.executed == 24
    assert _outcomes(result) == _reference_outcomes(ref, ["rand_b", "bc"])


def _private_network() -> bool:
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.mark.skipif(
    not _private_network(),
    reason="Ray listens on every interface: this test runs only inside a "
    "private network namespace (make test / scripts/isolated)",
)
def test_ray_executor_same_results_and_reruns_a_dead_actor(reference, ckpts, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the Ray executor needs the 'ray' package")
    import ray

    from evaluator import RayExecutor

    ref, _ = reference
    marker = tmp_path / "killed"
    # Ray workers inherit the driver's environment: one actor SIGKILLs itself mid-episode
    monkeypatch.setenv(KILL_HOOK_ENV, f"after=2,once={marker}")
    events = []
    with RayExecutor(workers=1, init_kwargs={"_node_ip_address": "127.0.0.1"}) as ex:
        result = evaluate(
            [ckpts["bc"]], _spec(), tmp_path / "ray", executor=ex, progress=events.append, videos=False, plots=False
        )
        assert ex.worker_pids and int(marker.read_text()) not in ex.worker_pids  # a fresh actor took over
    assert not ray.is_initialized()  # our own Ray only, shut down with ray.shutdown()
    assert result.executor == "ray" and result.summary("bc").status == "ok"
    assert marker.is_file() and result.worker_restarts == 1
    assert [e.kind for e in events].count("worker_lost") == 1
    assert _outcomes(result) == _reference_outcomes(ref, ["bc"])


# ---------------------------------------------------------------------------------------------
# policies that fail
# ---------------------------------------------------------------------------------------------


class RaiseAtStep:
    """Raises on the k-th act() call after a reset (picklable: module level)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0

    def __call__(self, obs):
        self.calls += 1
        if self.calls > self.k:
            raise RuntimeError("boom from the policy")
        return np.zeros(len(obs["state"]), dtype=np.int64)

    def reset(self, env_ids=None):
        self.calls = 0


def nan_actions(obs):
    return np.full((len(obs["state"]), 7), np.nan, dtype=np.float32)


def nan_discrete(obs):
    return np.full(len(obs["state"]), np.nan)


def hold_still(obs):
    return np.full(len(obs["state"]), 12, dtype=np.int64)  # "open gripper": a no-op


def test_policies_that_raise_or_return_nan_fail_their_episodes(executor, tmp_path):
    disc = PolicySpec.from_env(TwinEnv("reach"), ["state"])
    cont = PolicySpec.from_env(TwinEnv("reach", control_mode="ee_delta"), ["state"])
    raiser = RaiseAtStep(5)
    wrong = PolicySpec(task="reach", observations=[ObsSpec("state", (99,), "float32")], action=disc.action)
    refs = [
        policy_ref(CallablePolicy(raiser, disc, reset_fn=raiser.reset), "raises"),
        policy_ref(CallablePolicy(nan_actions, cont), "nan_continuous"),
        policy_ref(CallablePolicy(nan_discrete, disc), "nan_discrete"),
        policy_ref(CallablePolicy(hold_still, disc), "holds"),
        policy_ref(CallablePolicy(lambda obs: np.zeros(len(obs["state"])), disc), "lambda"),
        policy_ref(CallablePolicy(hold_still, wrong), "wrong_shape"),
    ]
    spec = _spec(conditions=[NOMINAL, "object_pose"], episodes_per_condition=2, video={"enabled": False})
    result = evaluate(refs, spec, tmp_path / "fail", executor=executor, plots=False)
    by = {s.label: s for s in result.checkpoints}
    for r in result.episodes_of(by["raises"].checkpoint_id):
        assert (r.success, r.failure_reason, r.length) == (False, "policy_error", 5)
        assert "RuntimeError: boom from the policy" in r.error
    for r in result.episodes_of(by["nan_continuous"].checkpoint_id):
        assert (r.failure_reason, r.length) == ("policy_nonfinite_action", 0) and "nan" in r.error
    for r in result.episodes_of(by["nan_discrete"].checkpoint_id):
        assert (r.failure_reason, r.length) == ("policy_invalid_action", 0)
    for r in result.episodes_of(by["holds"].checkpoint_id):
        assert (r.failure_reason, r.length) == ("timeout", MAX_STEPS)
    assert by["raises"].per_condition[NOMINAL]["failure_reasons"] == {"policy_error": 2}
    assert all(len(result.episodes_of(by[k].checkpoint_id)) == 4 for k in ("raises", "nan_continuous", "holds"))
    # a policy that cannot be pickled cannot go to worker processes, but runs inline
    assert by["lambda"].status == "failed" and "executor='inline'" in by["lambda"].error
    # a spec that does not fit the env fails in the worker, with the mismatch named
    assert by["wrong_shape"].status == "failed" and "expects shape (99,)" in by["wrong_shape"].error
    assert result.episodes_of(by["wrong_shape"].checkpoint_id) == []
    inline = evaluate([refs[0], refs[4]], spec, tmp_path / "fail_inline", executor=InlineExecutor(), plots=False)
    assert [s.status for s in inline.checkpoints] == ["ok", "ok"]
    assert _outcomes(inline)[:4] == _outcomes(result)[:4]


def test_worker_keeps_its_envs_across_episode_lengths():
    """Specs that differ only in max_steps run on the same kept-alive envs."""
    from evaluator.worker import WorkerState
    from twin.tasks.base import ObservationCfg

    ws = WorkerState(kill_hook=False)
    try:
        obs = ObservationCfg(state=True)
        a = [id(e) for e in ws.envs_for("reach", "discrete", obs, 5, 2)]
        b = ws.envs_for("reach", "discrete", obs, 40, 2)
        assert a == [id(e) for e in b]
        assert all(e.cfg.terminations.max_steps == 40 for e in b)
        c = ws.envs_for("reach", "discrete", obs, None, 3)
        assert [id(e) for e in c[:2]] == a and len(c) == 3
        assert all(e.cfg.terminations.max_steps == 25 for e in c)  # the task's own
    finally:
        ws.close()


def test_recorded_observations_resume_and_match_the_episodes(reference, ckpts, executor, tmp_path):
    """A campaign asked to record (for OOD references) keeps the observations each policy acted
    on; a finished campaign asked later re-runs only the episodes it has no record of, with
    the same results (paired design); asking again runs nothing."""
    import numpy as np

    from evaluator.run import RecordRequest

    ref, _ = reference
    out = tmp_path / "c"
    shutil.copytree(ref.out_dir, out)  # the finished campaign, without records
    req = RecordRequest(conditions=("nominal", "combined"), episodes=2)
    again = evaluate([ckpts["rand_a"], ckpts["bc"]], _spec(), out, executor=executor, record=req, videos=False)
    assert again.executed == 2 * 4  # 2 checkpoints x (2 nominal + 2 combined), nothing else
    assert _outcomes(again) == [
        o for o in _outcomes(ref) if o[0][0] in {again.checkpoints[0].checkpoint_id, again.checkpoints[1].checkpoint_id}
    ]
    pairs = again.record_episodes["reach"]
    assert pairs == [("nominal", 500), ("nominal", 501), ("combined", 500), ("combined", 501)]
    for s in again.checkpoints:
        obs = again.recorded_obs(s.checkpoint_id)
        lengths = {(r.condition, r.seed): r.length for r in again.episodes_of(s.checkpoint_id)}
        assert obs["state"].shape[0] == sum(lengths[p] for p in pairs)
        assert [int((obs["episode_index"] == k).sum()) for k in range(4)] == [lengths[p] for p in pairs]
        assert np.isfinite(obs["state"]).all()
    third = evaluate([ckpts["rand_a"], ckpts["bc"]], _spec(), out, executor=executor, record=req, videos=False)
    assert third.executed == 0
