"""TwinEnv / BatchedTwinEnv on real MuJoCo: spaces, control modes, bad input, determinism."""

import numpy as np
import pytest

from twin.batched import BatchedTwinEnv
from twin.env import PROPRIO_DIM, TwinEnv
from twin.tasks import ObservationCfg, TaskError, list_tasks, make_task


@pytest.fixture(scope="module")
def env():
    e = TwinEnv("mug_to_sink")
    yield e
    e.close()


def test_registry_lists_tasks_and_rejects_unknown():
    assert "mug_to_sink" in list_tasks()
    with pytest.raises(TaskError, match="unknown task 'nope'.*mug_to_sink"):
        make_task("nope")


def test_reset_obs_matches_space_and_is_deterministic(env):
    obs1, info = env.reset(seed=3)
    assert env.observation_space.contains(obs1)
    assert obs1["proprio"].shape == (PROPRIO_DIM,)
    assert info["success"] is False
    obs2, _ = env.reset(seed=3)
    obs3, _ = env.reset(seed=4)
    np.testing.assert_array_equal(obs1["state"], obs2["state"])
    assert not np.allclose(obs1["state"], obs3["state"])


def test_same_seed_same_actions_same_trajectory():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(8, 7)).astype(np.float32)
    runs = []
    for _ in range(2):
        e = TwinEnv("mug_to_sink")
        e.reset(seed=11)
        runs.append(np.stack([e.step(a)[0]["state"] for a in actions]))
        e.close()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_ee_delta_moves_tcp_by_the_commanded_amount(env):
    env.reset(seed=0)
    start = env.sim.tcp_pose()[:3]
    for _ in range(3):
        env.step(np.array([1.0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32))
    for _ in range(5):
        env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32))
    moved = env.sim.tcp_pose()[:3] - start
    assert moved[0] == pytest.approx(3 * env.cfg.actions.max_delta_pos, abs=0.005)
    assert abs(moved[1]) < 0.005 and abs(moved[2]) < 0.005


def test_discrete_actions_follow_casher_table():
    e = TwinEnv("mug_to_sink", control_mode="discrete")
    assert e.action_space.n == 14
    e.reset(seed=0)
    start = e.sim.tcp_pose()[:3]
    e.step(4)  # +z 3 cm
    for _ in range(4):
        e.step(12)  # open (no motion)
    assert (e.sim.tcp_pose()[:3] - start)[2] == pytest.approx(0.03, abs=0.004)
    e.step(13)  # close
    for _ in range(4):
        e.step(13)
    assert e.sim.gripper_width() < 0.01
    e.close()


def test_joint_pos_mode_tracks_targets():
    e = TwinEnv("mug_to_sink", control_mode="joint_pos")
    e.reset(seed=0)
    q = e.sim.arm_qpos()
    q[0] += 0.2
    for _ in range(10):
        e.step(np.concatenate([q, [1.0]]).astype(np.float32))
    assert e.sim.arm_qpos()[0] == pytest.approx(q[0], abs=0.01)
    e.close()


def test_nan_and_out_of_bounds_actions_are_clipped_and_reported(env):
    env.reset(seed=0)
    before = env.sim.tcp_pose()[:3]
    _, _, term, trunc, info = env.step(np.array([np.nan, np.inf, 0, 0, 0, 0, 1], dtype=np.float32))
    assert info["action_nonfinite"] is True
    assert np.isfinite(env.sim.data.qpos).all()
    assert np.linalg.norm(env.sim.tcp_pose()[:3] - before) < 0.01  # NaN entries hold the pose
    _, _, _, _, info = env.step(np.array([50, 0, 0, 0, 0, 0, 1], dtype=np.float32))
    assert info["action_clipped"] is True
    assert np.isfinite(env.sim.data.qpos).all()
    with pytest.raises(TaskError, match="expects"):
        env.step(np.zeros(3, dtype=np.float32))


def test_physics_blowup_ends_episode_as_failed(env):
    env.reset(seed=0)
    mug = env.sim.model.body("mug").id
    dof = env.sim.model.jnt_dofadr[env.sim.model.body_jntadr[mug]]
    env.sim.data.qvel[dof : dof + 3] = 1e9
    obs, r, term, trunc, info = env.step(np.zeros(7, dtype=np.float32))
    assert term is True and info["failure_reason"] == "physics_unstable" and info["success"] is False
    assert all(np.isfinite(v).all() for v in obs.values())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7, dtype=np.float32))
    env.reset(seed=0)  # recovers


def test_timeout_truncates_with_reason():
    e = TwinEnv("mug_to_sink", max_steps=3)
    e.reset(seed=0)
    for _ in range(3):
        _, _, term, trunc, info = e.step(np.zeros(7, dtype=np.float32))
    assert trunc and not term and info["failure_reason"] == "timeout"
    e.close()


def test_camera_observations_and_point_cloud_geometry():
    obs_cfg = ObservationCfg(rgb=True, depth=True, point_cloud=True, image_size=(160, 120), num_points=4096)
    e = TwinEnv("mug_to_sink", observations=obs_cfg)
    obs, _ = e.reset(seed=0)
    assert e.observation_space.contains(obs)
    for cam in e.camera_names():
        rgb = obs[f"rgb/{cam}"]
        assert rgb.std() > 10  # not blank
        depth = obs[f"depth/{cam}"]
        assert 0.2 < np.median(depth) < 3.0
    pc = obs["point_cloud"]
    lo, hi = np.array(e.scene.workspace[0]), np.array(e.scene.workspace[1])
    assert np.all(pc[:, :3] >= lo - 1e-5) and np.all(pc[:, :3] <= hi + 1e-5)
    # Points near the mug's footprint rise to about the mug's height; table points are at z = 0.
    mug = e.sim.body_pose("mug")[:3]
    near = np.linalg.norm(pc[:, :2] - mug[:2], axis=1) < 0.02
    assert near.sum() > 5 and pc[near, 2].max() == pytest.approx(0.09, abs=0.012)
    table = (np.abs(pc[:, 1]) > 0.55) & (pc[:, 0] > 0.2)
    assert table.sum() > 20 and np.median(np.abs(pc[table, 2])) < 0.004
    e.close()


def test_batched_env_stacks_and_matches_single_envs():
    b = BatchedTwinEnv("mug_to_sink", 3)
    obs, infos = b.reset(seeds=[0, 1, 2])
    assert obs["state"].shape[0] == 3 and infos["success"].shape == (3,)
    actions = np.tile(np.array([0.5, 0, -0.5, 0, 0, 0, 1], dtype=np.float32), (3, 1))
    obs, rew, term, trunc, infos = b.step(actions)
    single = TwinEnv("mug_to_sink")
    single.reset(seed=1)
    sobs, srew, *_ = single.step(actions[1])
    np.testing.assert_array_equal(obs["state"][1], sobs["state"])
    assert rew[1] == pytest.approx(srew)
    b.close()
    single.close()


def test_batched_autoreset_restarts_finished_envs():
    b = BatchedTwinEnv("mug_to_sink", 2, max_steps=2, autoreset=True)
    b.reset(seeds=[0, 1])
    zero = np.zeros((2, 7), dtype=np.float32)
    b.step(zero)
    obs, _, _, trunc, infos = b.step(zero)
    assert trunc.all() and set(infos["final_info"]) == {0, 1} and not b.done.any()
    # The returned observation already belongs to the next episode (seeds 2 and 3).
    fresh = TwinEnv("mug_to_sink")
    first, _ = fresh.reset(seed=3)
    np.testing.assert_array_equal(obs["state"][1], first["state"])
    assert not np.array_equal(infos["final_obs"][1]["state"], first["state"])
    _, _, _, trunc, _ = b.step(zero)
    assert not trunc.any()
    b.close()
    fresh.close()


def test_task_outcome_equals_success_reward_info_along_episodes():
    """The env reads success, reward and info through ``Task.outcome`` once per step; it must
    agree with the three separate methods, including at success (scripted expert) and for a
    subclass that redefines only ``success``."""
    from twin.tasks.mug_to_sink import MugToSink

    for task in ("mug_to_sink", "reach"):
        e = TwinEnv(task, control_mode="discrete")
        rng = np.random.default_rng(0)
        for seed in range(3):
            e.reset(seed=seed)
            for _ in range(15):
                e.step(int(rng.integers(14)))
                t, s = e.task, e.sim
                assert t.outcome(s) == (t.success(s), float(t.reward(s)), t.info(s))
        e.close()
    e = TwinEnv("mug_to_sink", control_mode="ee_pose")
    e.reset(seed=0)
    expert = e.task.expert()
    expert.reset(e.sim)
    successes = 0
    for _ in range(e.cfg.terminations.max_steps):
        _, r, term, trunc, info = e.step(expert.act(e.sim))
        assert e.task.outcome(e.sim) == (info["success"], r, {"mug_sink_distance": info["mug_sink_distance"]})
        successes += info["success"]
        if term or trunc:
            break
    assert successes == 1 and r == 1.0
    e.close()

    class NeverDone(MugToSink):
        def success(self, sim):  # type: ignore[override]
            return False

    t = NeverDone()
    e = TwinEnv(t, control_mode="ee_pose")
    e.reset(seed=0)
    expert = t.expert()
    expert.reset(e.sim)
    for _ in range(e.cfg.terminations.max_steps):
        _, r, term, trunc, info = e.step(expert.act(e.sim))
        assert info["success"] is False and not term
    e.close()


def test_max_steps_can_change_on_a_kept_env():
    e = TwinEnv("reach", control_mode="discrete")
    assert e.cfg.terminations.max_steps == 25
    e.set_max_steps(3)
    e.reset(seed=0)
    for i in range(3):
        _, _, term, trunc, info = e.step(0)
    assert trunc or term
    e.set_max_steps(None)
    assert e.cfg.terminations.max_steps == 25 and e.task.cfg.terminations.max_steps == 25
    with pytest.raises(ValueError, match="at least one step"):
        e.set_max_steps(0)
    e.close()


def test_scene_variants_are_reused_per_condition_values():
    """A reset under scene values seen before reuses the perturbed scene (same object, same
    compiled sim); other values or no values give their own; unknown factors still fail."""
    from twin.perturbations import Condition, PerturbationError

    e = TwinEnv("reach", control_mode="discrete")
    e.reset(seed=0)
    base_sim = e.sim
    assert e.scene is e.base_scene
    lit = Condition(name="light", values={"light_intensity": 0.5})
    e.reset(seed=1, options={"condition": lit})
    lit_scene, lit_sim = e.scene, e.sim
    assert lit_sim is not base_sim and lit_scene.digest() != e.base_scene.digest()
    e.reset(seed=2, options={"condition": Condition(name="again", values={"light_intensity": 0.5})})
    assert e.scene is lit_scene and e.sim is lit_sim
    e.reset(seed=3, options={"condition": Condition(name="noise", values={"observation_noise": 0.01})})
    assert e.scene is e.base_scene and e.sim is base_sim  # not a scene factor
    with pytest.raises(PerturbationError):
        e.reset(seed=4, options={"condition": Condition(name="bad", values={"no_such_factor": 1.0})})
    e.close()


def test_is_stable_catches_nan_and_runaway_speeds(env):
    env.reset(seed=0)
    assert env.sim.is_stable()
    env.sim.data.qvel[0] = np.nan
    assert not env.sim.is_stable()
    env.sim.data.qvel[0] = -2e3
    assert not env.sim.is_stable()
    env.sim.data.qvel[0] = 0.0
    env.sim.data.qpos[3] = np.inf
    assert not env.sim.is_stable()


def test_step_phases_equal_step_across_interleaved_envs():
    """begin_step / physics_step / end_step, run across several envs phase by phase (as the
    evaluator's workers do), give every env exactly what env.step gives it alone."""
    seeds = [3, 4, 5]
    ref = [TwinEnv("mug_to_sink", control_mode="discrete", max_steps=25) for _ in seeds]
    phased = [TwinEnv("mug_to_sink", control_mode="discrete", max_steps=25) for _ in seeds]
    for a, b, s in zip(ref, phased, seeds):
        oa, _ = a.reset(seed=s)
        ob, _ = b.reset(seed=s)
        np.testing.assert_array_equal(oa["state"], ob["state"])
    rng = np.random.default_rng(0)
    for t in range(25):
        actions = [int(x) for x in rng.integers(0, 14, size=len(seeds))]
        want = [e.step(a) for e, a in zip(ref, actions)]
        reports = [e.begin_step(a) for e, a in zip(phased, actions)]
        stable = [e.physics_step() for e in phased]
        got = [e.end_step(r, s) for e, r, s in zip(phased, reports, stable)]
        for (ow, rw, tw, uw, iw), (og, rg, tg, ug, ig) in zip(want, got):
            for k in ow:
                np.testing.assert_array_equal(ow[k], og[k])
            assert (rw, tw, uw) == (rg, tg, ug) and iw == ig
    assert all(e.steps == 25 for e in phased) and all(e.physics_s > 0 for e in phased)
    for e in ref + phased:
        e.close()


def test_envs_share_a_compiled_model_unless_the_task_writes_it():
    """Envs of one scene share the MjModel (each with its own MjData and IK scratch data) and
    stay independent; a task that writes into its model at reset (open_cabinet moves the
    cabinet) gets a model per env."""
    a = TwinEnv("mug_to_sink", control_mode="discrete")
    b = TwinEnv("mug_to_sink", control_mode="discrete")
    assert a.sim.model is b.sim.model
    assert a.sim.data is not b.sim.data and a.sim.ik.data is not b.sim.ik.data
    actions = [int(x) for x in np.random.default_rng(1).integers(0, 14, size=20)]
    a.reset(seed=7)
    alone = [a.step(x)[0]["state"] for x in actions]
    a.reset(seed=7)
    b.reset(seed=8)
    for x, want in zip(actions, alone):
        b.step(13 - x)
        np.testing.assert_array_equal(a.step(x)[0]["state"], want)
    c = TwinEnv("open_cabinet")
    d = TwinEnv("open_cabinet")
    assert c.task.writes_model and c.sim.model is not d.sim.model
    c.reset(seed=1)
    cab = c.sim.model.body("cabinet").id
    pos = c.sim.model.body_pos[cab].copy()
    d.reset(seed=2)
    np.testing.assert_array_equal(c.sim.model.body_pos[cab], pos)
    assert not np.array_equal(d.sim.model.body_pos[cab], pos)
    for e in (a, b, c, d):
        e.close()
