"""The second engine (twin.bullet, PyBullet) that plays the real cell: parity with the twin where
the scene description fixes things, the tasks solvable by their experts on it, and the
proxy-real commands that run it (real PyBullet, real MuJoCo, real bags and evaluator)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pybullet", reason="pybullet not installed (`make install`)")

from twin.bullet import BulletSim, projection_matrix  # noqa: E402
from twin.env import TwinEnv  # noqa: E402
from twin.tasks import make_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mug_to_sink", "box_to_shelf", "reach")
EE_PATH_TOL_M = 0.02  # open-loop joint trajectory: TCP paths of the two engines (measured: 7.5 mm max)
IOU_MIN = 0.8  # silhouette of each object, same camera, the two renderers
EXPERT_MIN = 9  # of 10 episodes solved by the task's scripted expert on PyBullet


def _envs(task: str, **kw) -> tuple[TwinEnv, TwinEnv]:
    return TwinEnv(task, render_mode=None, **kw), TwinEnv(task, render_mode=None, engine="pybullet", **kw)


@pytest.mark.parametrize("task", TASKS)
def test_same_scene_same_bodies_poses_masses(task):
    mj, pb = _envs(task)
    try:
        mj.reset(seed=5)
        pb.reset(seed=5)
        scene_bodies = {b.name for b in mj.scene.bodies}
        assert set(pb.sim.bodies) == scene_bodies
        model = mj.sim.model
        for name in scene_bodies:
            # the task's randomised placement (same seed) lands on the same pose in both engines
            np.testing.assert_allclose(pb.sim.body_pose(name), mj.sim.body_pose(name), atol=1e-6, err_msg=name)
            if pb.sim.is_free(name):
                uid = pb.sim.bodies[name]
                p = pb.sim.p
                links = range(-1, p.getNumJoints(uid, physicsClientId=pb.sim.client))
                mass = sum(p.getDynamicsInfo(uid, j, physicsClientId=pb.sim.client)[0] for j in links)
                assert mass == pytest.approx(float(model.body_subtreemass[model.body(name).id]), rel=1e-6), name
        for site in mj.scene.sites:
            np.testing.assert_allclose(pb.sim.site_pos(site.name), mj.sim.site_pos(site.name), atol=1e-9)
        # the robot at home: same joints, TCP within the two Panda models' TCP offsets (1.6 mm)
        np.testing.assert_allclose(pb.sim.arm_qpos(), mj.sim.arm_qpos(), atol=1e-9)
        assert np.linalg.norm(pb.sim.tcp_pose()[:3] - mj.sim.tcp_pose()[:3]) < 0.003
        assert abs(pb.sim.gripper_width() - mj.sim.gripper_width()) < 1e-6
    finally:
        mj.close()
        pb.close()


def _push_t_sims():
    from twin.sim import TwinSim

    scene = make_task("push_t").cfg.scene  # two-box T (first geom off the body origin), no hinges
    return TwinSim(scene), BulletSim(scene)


def test_a_multi_geom_body_has_its_mass_where_the_twin_has_it():
    """Each geom's share of the mass at the geom's centre, as MuJoCo: the T's centre of mass
    (40.7 mm along its stem) in the same place in both engines, and poses round-trip through
    PyBullet's inertial frame. Before: the first geom's share sat at the body origin (8.6 mm off)."""
    mj, pb = _push_t_sims()
    try:
        pose = (np.array([0.45, 0.05, 0.015]), np.array([0.9238795, 0.0, 0.0, 0.3826834]))
        mj.set_free_body_pose("t_block", *pose)
        mujoco.mj_forward(mj.model, mj.data)
        pb.set_free_body_pose("t_block", *pose)
        np.testing.assert_allclose(pb.body_pose("t_block"), mj.body_pose("t_block"), atol=1e-7)
        p, c, uid = pb.p, pb.client, pb.bodies["t_block"]
        masses = [
            p.getDynamicsInfo(uid, j, physicsClientId=c)[0] for j in range(-1, p.getNumJoints(uid, physicsClientId=c))
        ]
        coms = [np.array(p.getBasePositionAndOrientation(uid, physicsClientId=c)[0])]
        coms += [np.array(p.getLinkState(uid, j, physicsClientId=c)[0]) for j in range(len(masses) - 1)]
        com = sum(m * x for m, x in zip(masses, coms, strict=True)) / sum(masses)
        twin_com = mj.data.subtree_com[mj.model.body("t_block").id]
        assert np.linalg.norm(com - twin_com) < 5e-4, (com, twin_com)
    finally:
        pb.close()


def test_a_pair_of_equal_materials_slides_at_the_described_friction():
    """The T (friction 0.5) on the table top (0.5) slides at 0.5 in both engines: launched at
    0.4 m/s it stops after v^2 / (2 mu g) = 16.3 mm. Bullet multiplies the two surfaces'
    coefficients; before each got the square root, the T slid 33 mm (mu 0.25)."""
    mu, v0 = 0.5, 0.4
    expected = v0**2 / (2 * mu * 9.81)
    mj, pb = _push_t_sims()
    try:
        start = np.array([0.50, 0.0, 0.015])
        quat = np.array([1.0, 0.0, 0.0, 0.0])
        pb.reset_robot()
        pb.set_free_body_pose("t_block", start, quat)
        p, c, uid = pb.p, pb.client, pb.bodies["t_block"]
        for _ in range(50):  # settle on the table
            p.stepSimulation(physicsClientId=c)
        before = pb.body_pose("t_block")[:3]
        p.resetBaseVelocity(uid, [0.0, -v0, 0.0], [0.0, 0.0, 0.0], physicsClientId=c)
        for _ in range(500):
            p.stepSimulation(physicsClientId=c)
        slid = float(np.linalg.norm(pb.body_pose("t_block")[:2] - before[:2]))
        assert slid == pytest.approx(expected, rel=0.25), (
            f"slid {slid * 1000:.1f} mm, expected {expected * 1000:.1f} mm"
        )
    finally:
        pb.close()


def test_a_new_joint_target_is_ramped_over_the_control_step():
    """A 10 mm Cartesian step per 0.1 s control step: the TCP moves at about 0.1 m/s, not in a
    burst (PyBullet's motors handed the whole target at once peaked at 0.6 m/s on push_t)."""
    env = TwinEnv("reach", render_mode=None, engine="pybullet", control_mode="ee_pose")
    try:
        env.reset(seed=0)
        sim = env.sim
        p = sim.p
        speeds: list[float] = []

        class Probe:  # PyBullet itself, with the TCP speed read after every physics step
            def __getattr__(self, name):
                return getattr(p, name)

            def stepSimulation(self, **kw):
                p.stepSimulation(**kw)
                s = p.getLinkState(sim.robot, 11, computeLinkVelocity=1, physicsClientId=sim.client)
                speeds.append(float(np.linalg.norm(s[6])))

        sim.p = Probe()
        pos, rot = sim.tcp_pose_mat()
        for k in range(1, 8):
            sim.command_pose(pos + np.array([0.0, 0.01 * k, 0.0]), rot, 1.0)
            sim.step(env.nsub)
        sim.p = p
        mean_speed = 0.01 / env.cfg.control_dt
        assert max(speeds) < 2.5 * mean_speed, f"TCP peak {max(speeds):.3f} m/s for a {mean_speed:.2f} m/s command"
        assert np.mean(speeds[len(speeds) // 2 :]) == pytest.approx(mean_speed, rel=0.3)
    finally:
        env.close()


def test_cameras_have_the_scene_intrinsics_and_pose():
    """World points projected by PyBullet's view/projection matrices land on the pixels the
    scene's pinhole camera (K, pose) puts them, and on MuJoCo's camera's pixels."""
    mj, pb = _envs("mug_to_sink")
    try:
        mj.reset(seed=0)
        rng = np.random.default_rng(0)
        pts = rng.uniform([0.2, -0.4, 0.0], [0.8, 0.4, 0.3], size=(50, 3))
        for cam in mj.scene.cameras:
            view = np.array(pb.sim.p.computeViewMatrix(list(cam.pos), list(cam.target), list(cam.up))).reshape(4, 4).T
            proj = np.array(projection_matrix(cam)).reshape(4, 4).T
            clip = (proj @ view @ np.c_[pts, np.ones(len(pts))].T).T
            ndc = clip[:, :3] / clip[:, 3:]
            u_pb = (ndc[:, 0] + 1) / 2 * cam.width
            v_pb = (1 - ndc[:, 1]) / 2 * cam.height
            # the pinhole model from the scene: K and the look-at pose (OpenCV axes)
            fwd = np.asarray(cam.target) - np.asarray(cam.pos)
            fwd /= np.linalg.norm(fwd)
            right = np.cross(fwd, cam.up)
            right /= np.linalg.norm(right)
            down = np.cross(fwd, right)
            rc = (pts - np.asarray(cam.pos)) @ np.stack([right, down, fwd], axis=1)
            uv = (cam.intrinsic_matrix() @ (rc / rc[:, 2:]).T).T
            assert np.abs(u_pb - uv[:, 0]).max() < 0.5 and np.abs(v_pb - uv[:, 1]).max() < 0.5, cam.name
            # MuJoCo's own camera (fovy from fy, centred principal point)
            m, d = mj.sim.model, mj.sim.data
            cid = m.camera(cam.name).id
            R = d.cam_xmat[cid].reshape(3, 3)  # world-from-camera, x right, y up, -z forward
            pc = (pts - d.cam_xpos[cid]) @ R
            f = cam.height / 2 / np.tan(np.radians(m.cam_fovy[cid]) / 2)
            u_mj = cam.width / 2 + f * pc[:, 0] / -pc[:, 2]
            v_mj = cam.height / 2 - f * pc[:, 1] / -pc[:, 2]
            assert np.abs(u_pb - u_mj).max() < 0.5 and np.abs(v_pb - v_mj).max() < 0.5, cam.name
    finally:
        mj.close()
        pb.close()


def test_open_loop_joint_trajectory_gives_the_same_tcp_path():
    """The same joint-position trajectory replayed open loop in both engines: TCP paths agree
    within EE_PATH_TOL_M (different motors, link inertias and TCP, so not exactly)."""
    paths = {}
    for engine in ("mujoco", "pybullet"):
        env = TwinEnv("reach", control_mode="joint_pos", engine=engine, render_mode=None)
        env.reset(seed=3)
        q0 = env.sim.arm_qpos()
        path = []
        for k in range(40):
            t = k * env.cfg.control_dt
            q = q0 + 0.25 * np.sin(2 * np.pi * 0.25 * t) * np.array([1, 0.5, 0, 0.6, 0, -0.5, 1])
            env.step(np.concatenate([q, [1.0]]).astype(np.float32))
            path.append(env.sim.tcp_pose_mat()[0])
        paths[engine] = np.array(path)
        env.close()
    diff = np.linalg.norm(paths["mujoco"] - paths["pybullet"], axis=1)
    length = np.linalg.norm(np.diff(paths["mujoco"], axis=0), axis=1).sum()
    print(
        f"\nopen-loop TCP path ({length:.3f} m): engines differ by {diff.mean() * 1000:.1f} mm mean, {diff.max() * 1000:.1f} mm max"
    )
    assert length > 0.3  # the trajectory really moves the arm
    assert diff.max() < EE_PATH_TOL_M
    # a wrong trajectory (a joint offset) is told apart: the check can fail
    assert np.linalg.norm(paths["mujoco"][5:] - paths["pybullet"][:-5], axis=1).max() > EE_PATH_TOL_M


def test_both_engines_report_the_arms_joint_torques_holding_still():
    """The ``effort`` observation (what a recorder logs on /joint_states, and what calibration
    fits mass to): holding the home pose, both engines' torques are the arm's gravity load,
    shoulder and elbow carrying it, and agree within the robot models' difference (measured:
    -22.1 / 22.8 N m in MuJoCo, -19.1 / 20.1 N m in PyBullet)."""
    import dataclasses

    obs = dataclasses.replace(make_task("box_to_shelf").cfg.observations, effort=True)
    tau = {}
    for engine in ("mujoco", "pybullet"):
        env = TwinEnv("box_to_shelf", observations=obs, engine=engine, control_mode="ee_delta", render_mode=None)
        try:
            o, _ = env.reset(seed=3)
            for _ in range(10):
                o, *_ = env.step(np.zeros(7, np.float32))
            assert env.observation_space["effort"].contains(o["effort"])
            tau[engine] = o["effort"].astype(float)
        finally:
            env.close()
    for t in tau.values():
        assert t[1] < -15 and t[3] > 15  # joints 2 and 4 hold the arm up
        assert abs(t[0]) < 1 and abs(t[6]) < 1  # vertical axes carry no gravity
    assert np.abs(tau["mujoco"] - tau["pybullet"]).max() < 5.0, tau


@pytest.mark.parametrize("engine", ("mujoco", "pybullet"))
def test_the_tcp_quaternion_keeps_its_sign_while_the_hand_works_pointing_down(engine):
    """The TCP works pointing down, where the quaternion's w is near 0: with a ``w >= 0`` rule
    a tilt of a fraction of a degree flipped the whole observed quaternion (PyBullet's hand
    tilted one way, MuJoCo's the other, and a policy trained in the twin saw -1 for +1 on one
    input from the first step in the second engine). Through descents, sideways moves and
    +-yaw, both engines observe it in one hemisphere and continuously."""
    env = TwinEnv("box_to_shelf", control_mode="discrete", engine=engine, render_mode=None)
    try:
        obs, _ = env.reset(seed=100)
        quats = [obs["state"][-4:].astype(float)]
        for a in (5, 2, 11, 5, 3, 10, 10, 5, 0, 11, 1, 4, 9, 8, 5, 2):  # -z, +y, -yaw, ... (twin.env's table)
            obs, *_ = env.step(a)
            quats.append(obs["state"][-4:].astype(float))
    finally:
        env.close()
    q = np.array(quats)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert (q[:, 1] > 0.5).all(), q  # x, the down-pointing hand's large component, never changes sign
    # consecutive observations are close (|dq| < 0.2, the discrete rotation step is 0.02 rad)
    assert np.abs(np.diff(q, axis=0)).max() < 0.2


def _mujoco_mask(env: TwinEnv, camera: str, body: str, w: int, h: int) -> np.ndarray:
    m = env.sim.model
    r = mujoco.Renderer(m, h, w)
    try:
        r.enable_segmentation_rendering()
        r.update_scene(env.sim.data, camera=camera)
        seg = r.render()
    finally:
        r.close()
    ids, types = seg[..., 0], seg[..., 1]
    geom_body = np.append(m.geom_bodyid, -1)
    return (types == int(mujoco.mjtObj.mjOBJ_GEOM)) & (geom_body[np.where(ids >= 0, ids, -1)] == m.body(body).id)


@pytest.mark.parametrize("task", ("mug_to_sink", "box_to_shelf"))
def test_images_differ_but_show_the_same_objects_in_the_same_places(task):
    mj, pb = _envs(task)
    try:
        mj.reset(seed=2)
        pb.reset(seed=2)
        w, h = 320, 240
        for cam in ("cam_left", "cam_right"):
            frame, seg = pb.sim.render(cam, w, h, segmentation=True)
            rgb_mj = mj.render_camera(cam, w, h)
            assert frame.rgb.shape == rgb_mj.shape == (h, w, 3)
            # another renderer: the images are not the same
            assert np.abs(frame.rgb.astype(int) - rgb_mj.astype(int)).mean() > 2.0
            for name in pb.task.object_names:
                a, b = pb.sim.body_mask(seg, name), _mujoco_mask(mj, cam, name, w, h)
                iou = (a & b).sum() / max(1, (a | b).sum())
                print(f"\n{task} {cam} {name}: silhouette IoU {iou:.3f} ({a.sum()} / {b.sum()} px)")
                assert b.sum() > 100 and iou >= IOU_MIN
                # and a displaced silhouette would fail the bound
                shifted = np.roll(b, 12, axis=1)
                assert (a & shifted).sum() / max(1, (a | shifted).sum()) < IOU_MIN
            # depth is metric along the optical axis: the lifted cloud lies on the table and objects
            cloud = frame.point_cloud()
            assert len(cloud) > 0.5 * w * h
            on_table = cloud[(np.abs(cloud[:, 0] - 0.45) < 0.5) & (np.abs(cloud[:, 1]) < 0.6)]
            assert np.percentile(on_table[:, 2], 10) == pytest.approx(0.0, abs=0.01)
    finally:
        mj.close()
        pb.close()


@pytest.mark.parametrize("task", ("mug_to_sink", "box_to_shelf"))
def test_expert_solves_the_task_on_pybullet(task):
    env = TwinEnv(task, control_mode="ee_pose", engine="pybullet", render_mode=None)
    wins = 0
    try:
        for seed in range(10):
            env.reset(seed=seed)
            expert = env.task.expert()
            expert.reset(env.sim)
            info = {}
            for _ in range(env.cfg.terminations.max_steps):
                _, _, term, trunc, info = env.step(expert.act(env.sim))
                if term or trunc:
                    break
            wins += bool(info["success"])
    finally:
        env.close()
    print(f"\n{task} expert on pybullet: {wins}/10")
    assert wins >= EXPERT_MIN


def test_tasks_and_specs_that_cannot_run_on_pybullet_say_so():
    from evaluator.spec import EvalSpec, EvalSpecError
    from selection.proxy_real import ProxyRealDomain, ProxyRealError

    with pytest.raises(ValueError, match="push_t.*does not run on engine 'pybullet'"):
        TwinEnv("push_t", engine="pybullet")
    with pytest.raises(ValueError, match="engine 'bullet'"):
        TwinEnv("reach", engine="bullet")
    with pytest.raises(EvalSpecError, match="engine"):
        EvalSpec(tasks=["push_t"], engine="pybullet").validate()
    with pytest.raises(ProxyRealError, match="engine 'ode'"):
        ProxyRealDomain.load().with_engine("ode")
    assert EvalSpec(tasks=["reach"]).digest() != EvalSpec(tasks=["reach"], engine="pybullet").digest()
    assert make_task("mug_to_sink").engines == ("mujoco", "pybullet")
    with pytest.raises(Exception, match="articulated"):
        BulletSim(make_task("open_cabinet").cfg.scene)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twinrank.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def test_proxy_real_on_pybullet_records_logs_and_ground_truth(tmp_path):
    """`twinrank proxy-real record|truth --engine pybullet`: operator logs in the real-data
    schema (engine in the bag's metadata), and ground truth of real checkpoints run on PyBullet
    through the evaluator, labelled proxy-real (pybullet)."""
    import torch  # noqa: F401
    from test_racing import greedy_reach_checkpoint

    from policies import PolicySpec
    from selection.realdata import bag_info

    bag = tmp_path / "bag"
    r = _cli("proxy-real", "record", "reach", str(bag), "--engine", "pybullet", "--episodes", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "proxy-real (pybullet)" in r.stdout and "not real robot data" in r.stdout
    info = bag_info(bag)
    assert info["meta"]["engine"] == "pybullet" and info["meta"]["domain"] == "proxy-real"
    assert len(info["episodes"]) == 3 and all(e["success"] for e in info["episodes"])

    env = TwinEnv("reach")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    env.close()
    good = greedy_reach_checkpoint(spec, 0.0, tmp_path / "good")
    bad = greedy_reach_checkpoint(spec, 0.06, tmp_path / "bad")
    out = tmp_path / "truth"
    r = _cli(
        "proxy-real", "truth", str(good), str(bad), "--task", "reach", "--out", str(out),
        "--engine", "pybullet", "--episodes", "6", "--workers", "2", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    df = pd.read_csv(out / "proxy_real_outcomes.csv")
    assert set(df["engine"]) == {"pybullet"} and set(df["domain"]) == {"proxy-real (pybullet)"}
    rate = dict(zip(df["checkpoint"].map(lambda s: Path(s).name), df["real_success"], strict=True))
    assert rate["good"] >= 0.8 and rate["bad"] <= 0.2, rate
    assert (df["episodes"] == 6).all()
