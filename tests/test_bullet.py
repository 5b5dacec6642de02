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
EE_PATH_TOL_M = 0.02  # open-loop joint trajectory: TCP paths of the two engines (measured: 10.8 mm max)
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
