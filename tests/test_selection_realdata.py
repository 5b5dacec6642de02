"""Real-data bags (selection.realdata): rosbags round trips, the sim adapter, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from selection.realdata import (
    ARM_JOINTS,
    FINGER_JOINTS,
    BagNotFoundError,
    BagWriter,
    CorruptBagError,
    EmptyBagError,
    EpisodeEventError,
    JointNameError,
    MissingTopicError,
    RealDataError,
    RealDataWarning,
    bag_info,
    episodes_from_sim,
    hold,
    iter_episodes,
    read_bag,
    write_episodes_to_bag,
)


def _ts(ts: list[float]) -> np.ndarray:
    """Times as the reader returns them (integer nanoseconds / 1e9)."""
    return np.array([round(t * 1e9) / 1e9 for t in ts])


def _record(
    path: Path, fmt: str = "mcap", episodes: int = 3, steps: int = 6, robot: str = "fr3", seed: int = 0
) -> dict:
    """Write a bag with ``episodes`` episodes and return what was written."""
    rng = np.random.default_rng(seed)
    out: dict = {
        "t": [],
        "q": [],
        "w": [],
        "dq": [],
        "wv": [],
        "tau": [],
        "state": [],
        "proprio": [],
        "act": [],
        "success": [True, False, None],
        "reason": ["", "dropped_object", ""],
    }
    with BagWriter(path, "mug_to_sink", domain="proxy-real", fmt=fmt, robot=robot, meta={"site": "lab"}) as w:
        for k in range(episodes):
            t0 = 5.0 * k + 0.25
            w.start_episode(t=t0, seed=100 + k, operator="ana")
            cols: dict = {key: [] for key in ("t", "q", "w", "dq", "wv", "tau", "state", "proprio", "act")}
            for i in range(steps):
                t = t0 + 0.1 * i
                q, dq, tau = rng.normal(size=7), rng.normal(size=7), rng.normal(size=7)
                width, wvel = float(rng.uniform(0, 0.08)), float(rng.normal())
                state, proprio = rng.normal(size=22).astype(np.float32), rng.normal(size=15).astype(np.float32)
                act = rng.normal(size=7).astype(np.float32)
                w.write_franka_state(t, q, width, dq=dq, tau=tau, width_vel=wvel)
                w.write_obs(t, "state", state)
                w.write_obs(t, "proprio", proprio)
                w.write_action(t, act)
                for key, v in zip(cols, (t, q, width, dq, wvel, tau, state, proprio, act)):
                    cols[key].append(v)
            w.end_episode(out["success"][k % 3], out["reason"][k % 3])
            for key in cols:
                out[key].append(cols[key])
    return out


# ---- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mcap", "sqlite3"])
def test_roundtrip_multiple_episodes_exact(tmp_path: Path, fmt: str) -> None:
    bag = tmp_path / "bag"
    rec = _record(bag, fmt)
    assert (bag / "metadata.yaml").is_file()
    eps = read_bag(bag, require=("joint_states", "episode", "meta", "obs/state", "action"))
    assert [e.episode for e in eps] == [0, 1, 2]
    for k, ep in enumerate(eps):
        assert ep.task == "mug_to_sink" and ep.domain == "proxy-real" and ep.robot == "fr3"
        assert ep.seed == 100 + k and ep.complete
        assert ep.success is rec["success"][k] and ep.failure_reason == rec["reason"][k]
        assert ep.meta["site"] == "lab" and ep.meta["operator"] == "ana"
        assert ep.joint_names == (*ARM_JOINTS["fr3"], *FINGER_JOINTS["fr3"])
        np.testing.assert_array_equal(ep.t, _ts(rec["t"][k]))
        expect_pos = np.column_stack([np.array(rec["q"][k]), rec["w"][k]])
        np.testing.assert_array_equal(ep.joint_pos, expect_pos)
        np.testing.assert_array_equal(ep.joint_vel, np.column_stack([np.array(rec["dq"][k]), rec["wv"][k]]))
        np.testing.assert_array_equal(ep.joint_effort[:, :7], np.array(rec["tau"][k]))
        assert np.isnan(ep.joint_effort[:, 7]).all()
        np.testing.assert_array_equal(ep.obs["state"], np.stack(rec["state"][k]))
        np.testing.assert_array_equal(ep.obs["proprio"], np.stack(rec["proprio"][k]))
        np.testing.assert_array_equal(ep.actions, np.stack(rec["act"][k]))
        np.testing.assert_array_equal(ep.obs_t["state"], ep.t)
        np.testing.assert_array_equal(ep.action_t, ep.t)
        assert ep.obs["state"].dtype == np.float32 and ep.joint_pos.dtype == np.float64
        assert ep.t_start == pytest.approx(5.0 * k + 0.25) and ep.t_end == pytest.approx(ep.t[-1])
    # The storage file alone reads the same.
    single = read_bag(bag / f"bag.{'mcap' if fmt == 'mcap' else 'db3'}")
    np.testing.assert_array_equal(single[1].joint_pos, eps[1].joint_pos)
    info = bag_info(bag)
    assert info["storage"] == fmt and not info["truncated"] and info["warnings"] == []
    assert info["topics"]["/joint_states"] == {"type": "sensor_msgs/msg/JointState", "count": 18}
    assert info["topics"]["/twinrank/episode"]["count"] == 6 and info["topics"]["/twinrank/meta"]["count"] == 1
    assert [e["success"] for e in info["episodes"]] == [True, False, None]
    assert [e["joint_states"] for e in info["episodes"]] == [6, 6, 6]
    assert info["meta"]["domain"] == "proxy-real" and info["meta"]["version"] == 1
    assert info["start"] == pytest.approx(0.25) and info["duration"] == pytest.approx(10.5)


def test_images_depth_points_poses_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bag = tmp_path / "cams"
    rgb = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    depth = [rng.uniform(0.2, 3.0, (24, 32)).astype(np.float32) for _ in range(3)]
    depth_mm = [rng.integers(0, 5000, (12, 16)).astype(np.uint16) for _ in range(3)]
    xyz = [rng.normal(size=(50, 3)).astype(np.float32) for _ in range(3)]
    col8 = [rng.integers(0, 256, (50, 3), dtype=np.uint8) for _ in range(3)]
    fused = rng.normal(size=(40, 6)).astype(np.float32)
    fused[:, 3:] = rng.integers(0, 256, (40, 3)).astype(np.float32) * np.float32(1.0 / 255.0)  # twin's colours
    K = np.array([[60.0, 0, 16], [0, 61.0, 12], [0, 0, 1]])
    with BagWriter(bag, "box_to_shelf", robot="panda") as w:
        w.write_camera_info(0.0, "wrist", K, 32, 24, D=[0.1, 0, 0, 0, 0])
        w.start_episode(t=0.0)
        for i in range(3):
            t = 0.5 * i
            w.write_franka_state(t, np.zeros(7), 0.05)
            w.write_image(t, "wrist", rgb[i])
            w.write_depth(t, "wrist", depth[i])
            w.write_depth(t, "front", depth_mm[i])  # uint16 -> 16UC1 millimetres
            w.write_points(t, "wrist", xyz[i], col8[i])
            w.write_points(t, "fused", fused)
            w.write_object_pose(t, "box", [0.1 * i, 0.2, 0.3], [0.5, 0.5, -0.5, 0.5])
        w.end_episode(True)
    (ep,) = read_bag(bag)
    assert ep.robot == "panda"
    assert len(ep.images["wrist"]) == 3
    np.testing.assert_array_equal(ep.images["wrist"].stack(), np.stack(rgb))
    np.testing.assert_array_equal(ep.images["wrist"].t, _ts([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(ep.depth["wrist"].stack(), np.stack(depth))
    np.testing.assert_array_equal(ep.depth["front"].stack(), np.stack(depth_mm).astype(np.float32) / np.float32(1000))
    for i in range(3):
        got = ep.points["wrist"].data[i]
        np.testing.assert_array_equal(got[:, :3], xyz[i])
        np.testing.assert_array_equal(got[:, 3:], col8[i].astype(np.float32) * np.float32(1.0 / 255.0))
        np.testing.assert_array_equal(ep.points["fused"].data[i], fused)
    track = ep.object_poses["box"]
    np.testing.assert_array_equal(track.pose[:, :3], [[0.0, 0.2, 0.3], [0.1, 0.2, 0.3], [0.2, 0.2, 0.3]])
    np.testing.assert_array_equal(track.pose[:, 3:], np.tile([0.5, 0.5, -0.5, 0.5], (3, 1)))
    assert track.frame_id == "world"
    info = ep.camera_info["wrist"]
    assert (info.width, info.height) == (32, 24)
    np.testing.assert_array_equal(info.K, K)
    np.testing.assert_array_equal(info.D, [0.1, 0, 0, 0, 0])
    # zstd-compressed MCAP chunks read the same.
    with BagWriter(tmp_path / "zst", "box_to_shelf", robot="panda", compress=True) as w:
        w.start_episode(t=0.0)
        for i in range(3):
            w.write_franka_state(0.5 * i, np.zeros(7), 0.05)
            w.write_image(0.5 * i, "wrist", rgb[i])
        w.end_episode(True)
    np.testing.assert_array_equal(read_bag(tmp_path / "zst")[0].images["wrist"].stack(), np.stack(rgb))
    # images=False skips sensor data but keeps the rest.
    (light,) = read_bag(bag, images=False)
    assert light.images == {} and light.points == {} and "box" in light.object_poses


def test_foreign_recording_split_joint_messages_and_custom_names(tmp_path: Path) -> None:
    """A bag as `ros2 bag record` of a Franka driver leaves it: arm and gripper joints in
    separate messages, no meta, no episode events, empty velocity."""
    bag = tmp_path / "driver"
    with BagWriter(bag, "reach") as w:
        w.meta = {}
        w._meta_written = True  # a plain recorder writes no /twinrank/meta
        w.write_joint_state(0.00, ["panda_finger_joint1", "panda_finger_joint2"], [0.02, 0.02], [0.1, 0.1])
        w.write_joint_state(0.01, [*ARM_JOINTS["panda"], "extra_joint"], np.arange(8.0))
        w.write_joint_state(0.02, ["panda_finger_joint1"], [0.01])  # one finger: width = 2 x
        w.write_joint_state(0.03, list(reversed(ARM_JOINTS["panda"])), np.arange(7.0), np.ones(7), np.ones(7))
    with pytest.warns(RealDataWarning, match="no /twinrank/episode events"):
        (ep,) = read_bag(bag)
    assert ep.task == "" and ep.domain == "real" and ep.success is None and not ep.complete
    np.testing.assert_array_equal(ep.t, _ts([0.01, 0.03]))
    np.testing.assert_array_equal(ep.joint_pos[0], [0, 1, 2, 3, 4, 5, 6, 0.04])
    np.testing.assert_array_equal(ep.joint_pos[1], [6, 5, 4, 3, 2, 1, 0, 0.02])
    assert np.isnan(ep.joint_vel[0, :7]).all() and ep.joint_vel[0, 7] == pytest.approx(0.2)
    assert np.isnan(ep.joint_vel[1, 7]) and (ep.joint_vel[1, :7] == 1).all()
    # Custom joint names (e.g. a remapped driver).
    bag2 = tmp_path / "custom"
    names = [f"arm_{i}" for i in range(7)]
    with BagWriter(bag2, "reach") as w:
        w.start_episode(t=0.0)
        w.write_joint_state(0.0, [*names, "hand"], np.arange(8.0))
        w.end_episode(None)
    (ep2,) = read_bag(bag2, arm_joints=names, finger_joints=["hand"])
    np.testing.assert_array_equal(ep2.joint_pos[0], [0, 1, 2, 3, 4, 5, 6, 14.0])
    assert ep2.joint_names == (*names, "hand") and ep2.success is None and ep2.complete


def test_iter_episodes_and_hold(tmp_path: Path) -> None:
    _record(tmp_path / "a", episodes=2, seed=1)
    _record(tmp_path / "b", episodes=1, seed=2)
    eps = list(iter_episodes([tmp_path / "a", tmp_path / "b"]))
    assert [(Path(e.source).name, e.episode) for e in eps] == [("a", 0), ("a", 1), ("b", 0)]
    np.testing.assert_array_equal(
        hold(np.array([0.0, 1.0, 2.0]), np.array([10, 11, 12]), np.array([-1, 0.5, 1.0, 5])), [10, 10, 11, 12]
    )
    with pytest.raises(RealDataError, match="no samples"):
        hold(np.zeros(0), np.zeros(0), np.array([1.0]))


# ---- sim adapter ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from policies.demos import collect_demos

    return collect_demos("reach", tmp_path_factory.mktemp("sim") / "reach.h5", 2, seed=1000)


def test_episodes_from_sim_maps_fields(reach_demos: Path) -> None:
    from policies.data import iter_episodes as iter_sim

    sims = list(iter_sim(reach_demos))
    eps = episodes_from_sim(reach_demos)
    assert len(eps) == 2
    for k, (ep, sim) in enumerate(zip(eps, sims)):
        T = sim.length
        assert ep.domain == "sim" and ep.task == "reach" and ep.episode == k and ep.seed == 1000 + k
        assert ep.success is sim.success and ep.complete and ep.robot == "panda"
        np.testing.assert_array_equal(ep.t, _ts([0.1 * i for i in range(T)]))
        # proprio = [7 joints, gripper width, TCP pos, quat]; joints come from it.
        np.testing.assert_array_equal(ep.joint_pos, sim.obs["proprio"][:, :8].astype(np.float64))
        np.testing.assert_array_equal(ep.joint_pos, sim.privileged[:, -15:-7])  # noise-free task: identical
        assert np.isnan(ep.joint_vel).all()
        np.testing.assert_array_equal(ep.obs["state"], sim.obs["state"])
        np.testing.assert_array_equal(ep.obs["proprio"], sim.obs["proprio"])
        np.testing.assert_array_equal(ep.actions, sim.actions.astype(np.float32))
        # reach's task state is the mug pose (pos + quat wxyz).
        np.testing.assert_array_equal(ep.object_poses["mug"].pose, sim.privileged[:, :7])
        assert ep.meta["sources"] == {"state": "obs", "proprio": "obs", "joints": "proprio"}
        assert ep.meta["condition"] == sim.condition
    priv = episodes_from_sim(reach_demos, keys=["proprio"])
    np.testing.assert_array_equal(priv[0].obs["state"], sims[0].privileged)
    assert priv[0].meta["sources"]["state"] == "privileged"


@pytest.mark.parametrize("fmt", ["mcap", "sqlite3"])
def test_sim_episodes_through_a_bag_match_the_adapter(reach_demos: Path, tmp_path: Path, fmt: str) -> None:
    from policies.data import iter_episodes as iter_sim

    bag = write_episodes_to_bag(iter_sim(reach_demos), tmp_path / "proxy", "reach", fmt=fmt)
    logged = read_bag(bag, require=("joint_states", "obs/state", "obs/proprio", "action", "episode"))
    direct = episodes_from_sim(reach_demos)
    assert len(logged) == len(direct) == 2
    for a, b in zip(direct, logged):
        assert b.domain == "proxy-real" and b.task == "reach" and b.seed == a.seed and b.success is a.success
        np.testing.assert_array_equal(b.joint_pos, a.joint_pos)
        for key in ("state", "proprio"):
            np.testing.assert_array_equal(b.obs[key], a.obs[key])
        np.testing.assert_array_equal(b.actions, a.actions)
        np.testing.assert_array_equal(b.object_poses["mug"].pose, a.object_poses["mug"].pose)
        np.testing.assert_allclose(b.t - b.t[0], a.t, atol=1e-9)
        assert b.meta["condition"] == a.meta["condition"]
    assert logged[1].t_start > logged[0].t_end


def test_sim_images_through_adapter_and_bag(tmp_path: Path) -> None:
    from policies.data import Episode, EpisodeWriter

    rng = np.random.default_rng(5)
    T = 3
    cloud = rng.normal(size=(T, 32, 6)).astype(np.float32)
    cloud[..., 3:] = rng.integers(0, 256, (T, 32, 3)).astype(np.float32) * np.float32(1.0 / 255.0)
    ep = Episode(
        obs={
            "proprio": rng.normal(size=(T, 15)).astype(np.float32),
            "rgb/cam_left": rng.integers(0, 256, (T, 16, 20, 3), dtype=np.uint8),
            "depth/cam_left": rng.uniform(0.1, 2, (T, 16, 20)).astype(np.float32),
            "point_cloud": cloud,
        },
        actions=rng.normal(size=(T, 7)).astype(np.float32),
        rewards=np.zeros(T, np.float32),
        privileged=rng.normal(size=(T, 22)).astype(np.float32),
        success_flags=np.array([0, 0, 1], bool),
        seed=7,
        failure_reason="",
    )
    h5 = tmp_path / "cams.h5"
    EpisodeWriter(h5, "reach", "ee_delta").add(ep)
    (sim,) = episodes_from_sim(h5)
    np.testing.assert_array_equal(sim.images["cam_left"].stack(), ep.obs["rgb/cam_left"])
    np.testing.assert_array_equal(sim.depth["cam_left"].stack(), ep.obs["depth/cam_left"])
    np.testing.assert_array_equal(sim.points["fused"].stack(), cloud)
    np.testing.assert_array_equal(sim.obs["state"], ep.privileged)  # no state observation recorded
    bag = write_episodes_to_bag([ep], tmp_path / "cams_bag", "reach", domain="proxy-real")
    (real,) = read_bag(bag)
    for attr, cam in (("images", "cam_left"), ("depth", "cam_left"), ("points", "fused")):
        np.testing.assert_array_equal(getattr(real, attr)[cam].stack(), getattr(sim, attr)[cam].stack())
    np.testing.assert_array_equal(real.obs["state"], sim.obs["state"])
    np.testing.assert_array_equal(real.joint_pos, sim.joint_pos)
    assert real.success is True


# ---- bad input -----------------------------------------------------------------------------
def test_errors_are_value_errors() -> None:
    for cls in (BagNotFoundError, EmptyBagError, CorruptBagError, MissingTopicError, JointNameError, EpisodeEventError):
        assert issubclass(cls, RealDataError) and issubclass(cls, ValueError)


def test_nonexistent_and_non_bag_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BagNotFoundError, match=r"nope does not exist.*metadata\.yaml"):
        read_bag(missing)
    with pytest.raises(BagNotFoundError, match="not a rosbag2 bag"):
        read_bag(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BagNotFoundError, match="suffix '.txt'"):
        bag_info(tmp_path / "notes.txt")
    with pytest.raises(RealDataError, match="does not exist"):
        list(iter_episodes([missing]))


def test_empty_bag(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "empty", "reach"):
        pass
    with pytest.raises(EmptyBagError, match=r"empty has no messages.*recorder running"):
        read_bag(tmp_path / "empty")
    with pytest.raises(EmptyBagError):
        bag_info(tmp_path / "empty")
    (tmp_path / "zero.mcap").write_bytes(b"")
    with pytest.raises(EmptyBagError, match=r"zero\.mcap is empty \(0 bytes\)"):
        read_bag(tmp_path / "zero.mcap")


def _two_episode_bag(path: Path, fmt: str = "mcap", compress: bool = False) -> Path:
    """Episode 0 small, episode 1 large (its images span several 1 MB MCAP chunks)."""
    rng = np.random.default_rng(3)
    with BagWriter(path, "reach", fmt=fmt, compress=compress) as w:
        w.start_episode(t=0.0, seed=1)
        for i in range(5):
            w.write_franka_state(0.1 * i, np.full(7, float(i)), 0.04)
            w.write_obs(0.1 * i, "state", np.arange(4.0) + i)
        w.end_episode(True)
        w.start_episode(t=10.0, seed=2)
        for i in range(40):
            w.write_franka_state(10.0 + 0.1 * i, np.zeros(7), 0.0)
            w.write_image(10.0 + 0.1 * i, "cam", rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
        w.end_episode(False)
    return w.file


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_mcap_keeps_complete_episodes(tmp_path: Path, compress: bool) -> None:
    full = _two_episode_bag(tmp_path / "long", compress=compress)
    data = full.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps = read_bag(cut)
    texts = [str(c.message) for c in caught if issubclass(c.category, RealDataWarning)]
    assert any("truncated or corrupt" in t and "cut.mcap" in t for t in texts)
    assert any("episode 1" in t and "no end event" in t for t in texts)
    first = eps[0]
    assert first.complete and first.success is True and first.length == 5
    np.testing.assert_array_equal(first.joint_pos[:, :7], np.repeat(np.arange(5.0), 7).reshape(5, 7))
    np.testing.assert_array_equal(first.obs["state"], np.arange(4.0)[None] + np.arange(5.0)[:, None])
    assert len(eps) == 2 and not eps[1].complete and eps[1].success is None
    assert 0 < eps[1].length < 40 and len(eps[1].images["cam"]) == eps[1].length
    info = bag_info(cut)
    assert info["truncated"] and info["episodes"][0]["complete"]
    with pytest.raises(CorruptBagError, match="truncated or corrupt"):
        read_bag(cut, strict=True)
    # Cut inside the first chunk: nothing to recover.
    tiny = tmp_path / "tiny.mcap"
    tiny.write_bytes(data[:5000])
    with pytest.raises(CorruptBagError, match=r"tiny\.mcap is truncated or corrupt.*re-copy"):
        read_bag(tiny)
    # The same file inside a bag folder (metadata.yaml intact, storage file cut).
    full.write_bytes(data[: len(data) // 2])
    with pytest.warns(RealDataWarning, match="truncated"):
        assert read_bag(tmp_path / "long")[0].success is True


def test_crashed_recorder_folder(tmp_path: Path) -> None:
    """A writer that dies leaves no metadata.yaml and an unterminated file."""
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / "crash", "reach") as w:
            w.start_episode(t=0.0)
            w.write_franka_state(0.0, np.zeros(7), 0.0)
            raise RuntimeError("robot e-stop")
    assert not (tmp_path / "crash" / "metadata.yaml").exists()
    with pytest.raises(CorruptBagError, match="crash"):
        read_bag(tmp_path / "crash")


def test_truncated_sqlite(tmp_path: Path) -> None:
    _two_episode_bag(tmp_path / "db", fmt="sqlite3")
    db = tmp_path / "db" / "db.db3"
    data = db.read_bytes()
    cut = tmp_path / "cut.db3"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptBagError, match=r"cut\.db3 is corrupt.*re-copy"):
        read_bag(cut)


def test_missing_required_topic(tmp_path: Path) -> None:
    bag = tmp_path / "noobs"
    with BagWriter(bag, "reach") as w:
        w.start_episode(t=0.0)
        w.write_franka_state(0.0, np.zeros(7), 0.0)
        w.end_episode(True)
    with pytest.raises(
        MissingTopicError,
        match=r"required topic /twinrank/obs/state; topics present: "
        r"\['/joint_states', '/twinrank/episode', '/twinrank/meta'\]",
    ):
        read_bag(bag, require=("joint_states", "obs/state"))
    with pytest.raises(MissingTopicError, match="/cam/color/image_raw"):
        read_bag(bag, require=("/cam/color/image_raw",))
    only_obs = tmp_path / "only_obs"
    with BagWriter(only_obs, "reach") as w:
        w.write_obs(0.0, "state", np.zeros(3))
    with pytest.raises(MissingTopicError, match=r"/joint_states.*drop 'joint_states' from require"):
        read_bag(only_obs)


def test_mismatched_joint_names(tmp_path: Path) -> None:
    ur = tmp_path / "ur5"
    with BagWriter(ur, "reach") as w:
        w.start_episode(t=0.0)
        w.write_joint_state(0.0, ["shoulder_pan_joint", "elbow_joint"], [0.0, 1.0])
        w.end_episode(True)
    with pytest.raises(
        JointNameError,
        match=r"expected fr3_joint1\.\.fr3_joint7.*panda_joint1.*found "
        r"\['shoulder_pan_joint', 'elbow_joint'\]",
    ):
        read_bag(ur)
    partial = tmp_path / "partial"
    with BagWriter(partial, "reach") as w:
        w.start_episode(t=0.0)
        w.write_joint_state(0.0, list(ARM_JOINTS["fr3"][:5]), np.zeros(5))
        w.end_episode(True)
    with pytest.raises(JointNameError, match=r"lacks arm joints \['fr3_joint6', 'fr3_joint7'\]"):
        read_bag(partial)
    mixed = tmp_path / "mixed"
    with BagWriter(mixed, "reach") as w:
        w.start_episode(t=0.0)
        w.write_joint_state(0.0, list(ARM_JOINTS["fr3"]), np.zeros(7))
        w.write_joint_state(0.1, list(ARM_JOINTS["panda"]), np.zeros(7))
        w.end_episode(True)
    with pytest.raises(JointNameError, match="uses panda joint names but earlier messages used fr3"):
        read_bag(mixed)


def _events_bag(path: Path, events: list[tuple[float, dict]]) -> Path:
    with BagWriter(path, "reach") as w:
        for t, ev in events:
            w._write("/twinrank/episode", "std_msgs/msg/String", w._string(json.dumps(ev)), round(t * 1e9))
            w.write_franka_state(t + 0.01, np.zeros(7), 0.0)
            w.write_franka_state(t + 0.02, np.ones(7), 0.0)
    return path


def test_start_without_end(tmp_path: Path) -> None:
    bag = _events_bag(
        tmp_path / "noend",
        [
            (0.0, {"event": "start", "episode": 0, "task": "reach", "seed": 4}),
            (1.0, {"event": "end", "episode": 0, "success": True}),
            (2.0, {"event": "start", "episode": 1, "task": "reach", "seed": 5}),
        ],
    )
    with pytest.warns(
        RealDataWarning, match=r"episode 1 started at t=2\.000 s has no end event; kept with success=None"
    ):
        eps = read_bag(bag)
    assert [(e.episode, e.success, e.complete) for e in eps] == [(0, True, True), (1, None, False)]
    assert eps[1].length == 2 and eps[1].seed == 5  # data up to the bag's end is kept
    with pytest.raises(EpisodeEventError, match="no end event"):
        read_bag(bag, strict=True)
    # A start followed by another start closes the first one as incomplete.
    twice = _events_bag(
        tmp_path / "twice",
        [
            (0.0, {"event": "start", "episode": 0}),
            (1.0, {"event": "start", "episode": 1}),
            (2.0, {"event": "end", "episode": 1, "success": False}),
        ],
    )
    with pytest.warns(RealDataWarning, match="episode 0 started"):
        eps = read_bag(twice)
    assert [(e.episode, e.success, e.complete, e.length) for e in eps] == [(0, None, False, 2), (1, False, True, 2)]


def test_end_without_start(tmp_path: Path) -> None:
    bag = _events_bag(
        tmp_path / "nostart",
        [
            (0.0, {"event": "end", "episode": 6, "success": True}),
            (1.0, {"event": "start", "episode": 7}),
            (2.0, {"event": "end", "episode": 7, "success": None}),
        ],
    )
    with pytest.warns(RealDataWarning, match=r"end event of episode 6 at t=0\.000 s has no start event"):
        eps = read_bag(bag)
    assert [(e.episode, e.success, e.complete) for e in eps] == [(7, None, True)]
    with pytest.raises(EpisodeEventError, match="has no start event"):
        read_bag(bag, strict=True)
    assert bag_info(bag)["warnings"]


def test_malformed_episode_events(tmp_path: Path) -> None:
    wrong = _events_bag(
        tmp_path / "wrong",
        [(0.0, {"event": "start", "episode": 0}), (1.0, {"event": "end", "episode": 3, "success": True})],
    )
    with pytest.raises(EpisodeEventError, match="is for episode 3 but episode 0 is open"):
        read_bag(wrong)
    bad = tmp_path / "notjson"
    with BagWriter(bad, "reach") as w:
        w._write("/twinrank/episode", "std_msgs/msg/String", w._string("start 0"), 0)
        w.write_franka_state(0.0, np.zeros(7), 0.0)
    with pytest.raises(EpisodeEventError, match="not a JSON object"):
        read_bag(bad)
    odd = _events_bag(tmp_path / "odd", [(0.0, {"event": "pause"})])
    with pytest.raises(EpisodeEventError, match="unknown episode event 'pause'"):
        read_bag(odd)


def test_wrong_topic_type_and_writer_misuse(tmp_path: Path) -> None:
    bag = tmp_path / "types"
    with BagWriter(bag, "reach") as w:
        w.start_episode(t=0.0)
        w.write_franka_state(0.0, np.zeros(7), 0.0)
        w._write("/twinrank/action", "std_msgs/msg/String", w._string("grasp"), 0)
        w.end_episode(True)
    with pytest.raises(RealDataError, match="/twinrank/action has type std_msgs/msg/String"):
        read_bag(bag)
    with pytest.raises(RealDataError, match="exists already"):
        BagWriter(bag, "reach").open()
    with pytest.raises(RealDataError, match="domain 'lab'"):
        BagWriter(tmp_path / "x", "reach", domain="lab")
    with BagWriter(tmp_path / "y", "reach") as w:
        with pytest.raises(RealDataError, match="no episode is open"):
            w.end_episode(True)
        with pytest.raises(RealDataError, match=r"\(H, W, 3\) uint8"):
            w.write_image(0.0, "cam", np.zeros((4, 4), np.float32))
        with pytest.raises(RealDataError, match="7 arm joint"):
            w.write_franka_state(0.0, np.zeros(6), 0.0)
