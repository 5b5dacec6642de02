"""The live twin's own nodes (twin_sync, policy_runner, recorder) and the whole graph, as real
rclpy nodes over loopback / shared memory.

Every test starts nodes from :mod:`twin.live.graph` descriptions through
:class:`twin.live.runner.GraphRunner` and talks to them from a separate probe node. The ROS
domain id is unique per test session (from the pid) and discovery is localhost-only.

Verdicts do not depend on machine load: waits are generous hang guards (WAIT_S), latencies
are measured and printed, not bounded (``twinrank live bench`` is the benchmark); what is
asserted holds at any speed (the twin reaches every published state and never goes back to
an older one, commands are paced no faster than real time, every message is recorded).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

# ---- ROS environment: before rclpy is imported anywhere ---------------------------------------
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_HOME", tempfile.mkdtemp(prefix="twinrank-roshome-"))
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
_ament = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
if sys.prefix not in _ament:
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([sys.prefix, *_ament])

rclpy = pytest.importorskip("rclpy", reason="ROS 2 from PyPI: pip install -e '.[ros]' (make install)")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float32MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from twin.live.graph import NodeDesc, live_graph  # noqa: E402
from twin.live.interfaces import (  # noqa: E402
    JOINT_NAMES,
    Desync,
    pack_joints,
)
from twin.live.runner import GraphRunner  # noqa: E402

HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
WAIT_S = 60.0  # hang guard for anything a loaded machine may take a while to do


def _acked(pub: Any) -> None:
    """Block until every message ``pub`` sent reached its (reliable) subscribers."""
    from rclpy.duration import Duration

    assert pub.wait_for_all_acked(Duration(seconds=WAIT_S)), f"{pub.topic_name}: messages not acknowledged"


@pytest.fixture(scope="module")
def ros():
    """rclpy's default context for this module (initialised here unless already up)."""
    owns = not rclpy.ok()
    if owns:
        rclpy.init()
    yield
    if owns and rclpy.ok():
        rclpy.shutdown()


class Probe:
    """A test node spun in its own thread: publishers, recorded subscriptions, service calls."""

    def __init__(self) -> None:
        self.node = rclpy.create_node(f"probe_{uuid.uuid4().hex[:8]}")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.msgs: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.hooks: dict[str, Callable[[float, Any], None]] = {}
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.ex.spin()
        except Exception:  # shutdown
            pass

    def sub(self, topic: str, kind: Any, depth: int = 1000) -> None:
        def cb(msg: Any, topic: str = topic) -> None:
            t = time.time()  # the ROS clock (system time): comparable with header stamps
            with self.lock:
                self.msgs[topic].append((t, msg))
            hook = self.hooks.get(topic)
            if hook is not None:
                hook(t, msg)

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(kind, topic, cb, qos)

    def pub(self, topic: str, kind: Any, depth: int = 1000) -> Any:
        return self.node.create_publisher(kind, topic, QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE))

    def got(self, topic: str) -> list[Any]:
        with self.lock:
            return [m for _, m in self.msgs[topic]]

    def last(self, topic: str) -> Any:
        with self.lock:
            return self.msgs[topic][-1][1] if self.msgs[topic] else None

    def clear(self, topic: str) -> None:
        with self.lock:
            self.msgs[topic].clear()

    @staticmethod
    def wait(cond: Callable[[], Any], timeout: float, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(0.01)
        if what:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        return None

    def wait_matched(self, pub: Any, n: int = 1, timeout: float = WAIT_S) -> None:
        self.wait(lambda: pub.get_subscription_count() >= n, timeout, f"{n} subscriber(s) on {pub.topic_name}")

    def wait_publisher(self, topic: str, timeout: float = WAIT_S) -> None:
        self.wait(lambda: self.node.count_publishers(topic) >= 1, timeout, f"a publisher on {topic}")

    def call(self, srv: str, timeout: float = WAIT_S) -> Trigger.Response:
        client = self.node.create_client(Trigger, srv)
        assert client.wait_for_service(timeout_sec=timeout), f"service {srv} not available"
        fut = client.call_async(Trigger.Request())
        self.wait(fut.done, timeout, f"the {srv} response")
        self.node.destroy_client(client)
        return fut.result()

    def stamp(self, dt: float = 0.0) -> Any:
        t = self.node.get_clock().now().nanoseconds + int(dt * 1e9)
        from builtin_interfaces.msg import Time

        return Time(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000)

    def joint_state(self, q: Any, width: float = 0.08, dt: float = 0.0, names: list[str] | None = None) -> JointState:
        n, pos = pack_joints(q, width)
        msg = JointState()
        msg.header.stamp = self.stamp(dt)
        msg.name = names if names is not None else n
        msg.position = [float(v) for v in pos]
        return msg

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Streamer:
    """Publishes ``self.q`` as /joint_states at ``rate_hz`` from a thread (a fake robot)."""

    def __init__(self, probe: Probe, pub: Any, q: Any, rate_hz: float = 250.0, width: float = 0.08) -> None:
        self.probe, self.pub, self.q, self.width = probe, pub, np.asarray(q, float), width
        self.period = 1.0 / rate_hz
        self.sent = 0
        self.running = threading.Event()
        self.running.set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            if self.running.is_set():
                self.pub.publish(self.probe.joint_state(self.q, self.width))
                self.sent += 1
            nxt += self.period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=2.0)


def _desync(probe: Probe) -> Desync | None:
    m = probe.last("/twin/desync")
    return None if m is None else Desync.from_json(m.data)


def _twin_q(probe: Probe) -> np.ndarray | None:
    m = probe.last("/twin/joint_states")
    return None if m is None else np.asarray(m.position[:7])


# ---- twin_sync ---------------------------------------------------------------------------------
def test_twin_sync_follows_joint_states(ros):
    """The twin's joints match a fake robot's /joint_states within 1e-3 rad after each jump and
    never go back to an older state (the newest sample wins, no backlog); the publish ->
    /twin/joint_states latency is measured and printed."""
    desc = NodeDesc(
        "twin_sync",
        "twin_sync",
        {"task": "reach", "render_rate_hz": 2.0, "render_width": 64, "render_height": 48, "render_cameras": "cam_left"},
    )
    with GraphRunner([desc]) as graph, Probe() as probe:
        pub = probe.pub("/joint_states", JointState)
        probe.sub("/twin/joint_states", JointState)
        probe.sub("/twin/desync", String)
        probe.sub("/twin/lost", Bool)
        probe.sub("/twin/cam_left/color/image_raw", Image, depth=5)
        probe.wait_matched(pub)
        probe.wait_publisher("/twin/joint_states")
        rng = np.random.default_rng(0)
        targets = [HOME + rng.uniform(-0.3, 0.3, 7) for _ in range(12)]
        latencies: list[float] = []
        state: dict[str, Any] = {"q": None, "t0": 0.0, "hit": True, "old": []}
        went_back: list[int] = []

        def on_twin(t: float, msg: JointState) -> None:
            q = np.asarray(msg.position[:7])
            if state["q"] is None:
                return
            if state["hit"]:
                if any(float(np.abs(q - o).max()) < 1e-9 for o in state["old"]):
                    went_back.append(len(latencies))  # an older state applied after the newer one
                return
            if float(np.abs(q - state["q"]).max()) < 1e-3:
                latencies.append(t - state["t0"])
                state["hit"] = True

        probe.hooks["/twin/joint_states"] = on_twin
        stream = Streamer(probe, pub, targets[0], rate_hz=500.0)
        try:
            for k, q in enumerate(targets):
                state.update(q=np.asarray(q), t0=time.time(), hit=False, old=[np.asarray(x) for x in targets[:k]])
                stream.q = np.asarray(q)
                if not probe.wait(lambda: state["hit"], WAIT_S):
                    tq = _twin_q(probe)
                    raise AssertionError(
                        f"the twin never reached the published joints (jump {len(latencies)}; "
                        f"residual {np.abs(tq - q).max() if tq is not None else None})"
                    )
                time.sleep(0.1)
            node = graph.node("twin_sync")
            d = probe.wait(
                lambda: (x := _desync(probe)) is not None and not x.lost and x.applied > 0 and x,
                WAIT_S,
                "/twin/desync with lost=false while streaming",
            )
            images = probe.wait(lambda: probe.got("/twin/cam_left/color/image_raw"), WAIT_S, "a twin render")
        finally:
            stream.stop()
        lat = np.asarray(latencies)
        internal = np.asarray(node.latencies[-2000:])
        print(
            f"\ntwin_sync follow latency (publish -> /twin/joint_states at the probe), {len(lat)} jumps: "
            f"p50 {np.median(lat) * 1e3:.1f} ms, max {lat.max() * 1e3:.1f} ms; stamp -> applied in the node: "
            f"p50 {np.median(internal) * 1e3:.2f} ms, p99 {np.percentile(internal, 99) * 1e3:.2f} ms "
            f"({len(internal)} samples); renders {len(images)}"
        )
        assert len(lat) == len(targets) and not went_back, went_back
        assert d.message_age_s < 0.5 and d.joint_residual_rad < 0.1  # what lost=false means
        img = images[-1]
        assert (img.width, img.height, img.encoding) == (64, 48, "rgb8") and len(img.data) == 64 * 48 * 3
        assert np.frombuffer(bytes(img.data), np.uint8).std() > 0  # a real render, not a blank frame
        js = probe.last("/twin/joint_states")
        assert list(js.name) == list(JOINT_NAMES)


def test_twin_sync_rejects_bad_messages_and_reports_lost(ros):
    """NaN, wrong names, out-of-order and stale joint states are rejected (counted, never
    applied); a far-away object pose and a stopped publisher make the twin lost."""
    desc = NodeDesc(
        "twin_sync", "twin_sync", {"task": "reach", "render_rate_hz": 0.0, "stale_timeout_s": 0.5, "lost_hold_s": 0.3}
    )
    with GraphRunner([desc]), Probe() as probe:
        pub = probe.pub("/joint_states", JointState)
        obj = probe.pub("/objects/mug/pose", PoseStamped, depth=10)
        probe.sub("/twin/joint_states", JointState)
        probe.sub("/twin/desync", String)
        probe.sub("/twin/objects/mug/pose", PoseStamped)
        probe.wait_matched(pub)
        probe.wait_matched(obj)
        q0 = HOME + 0.1
        stream = Streamer(probe, pub, q0, rate_hz=200.0)
        try:
            probe.wait(lambda: (d := _desync(probe)) is not None and not d.lost, WAIT_S, "in sync (lost=false)")
            probe.wait(lambda: (q := _twin_q(probe)) is not None and np.abs(q - q0).max() < 1e-9, WAIT_S, "twin at q0")
            probe.clear("/twin/joint_states")
            bad_q = HOME - 0.4
            # the 7 arm joints (and fingers) plus a joint the FR3 does not have: rejected as well
            # (README: "rejects NaN, unknown joints ..."), counted under "names"
            unknown = probe.joint_state(bad_q)
            unknown.name = [*unknown.name, "fr3_joint8"]
            unknown.position = [*unknown.position, 0.0]
            for _ in range(20):
                pub.publish(unknown)
                if probe.wait(lambda: (x := _desync(probe)) is not None and x.rejected.get("names", 0) >= 1, 0.5):
                    break
            d = probe.wait(
                lambda: (x := _desync(probe)) is not None and x.rejected.get("names", 0) >= 1 and x,
                WAIT_S,
                "the joint state with an unknown joint to be rejected",
            )
            assert d.rejected == {"names": d.rejected["names"]}, d.rejected
            bad = {
                "nan": lambda: probe.joint_state([math.nan, *bad_q[1:]]),
                "names": lambda: probe.joint_state(bad_q, names=[n.replace("fr3", "panda") for n in JOINT_NAMES]),
                "out_of_order": lambda: probe.joint_state(bad_q, dt=-0.2),
                "stale": lambda: probe.joint_state(bad_q, dt=-2.0),
            }
            for reason, make in bad.items():
                # the twin subscribes keep-last 5 (it wants the newest state): under load a
                # message can be superseded before it is taken, so repeat until it is seen
                for _ in range(10):
                    pub.publish(make())
                    if probe.wait(lambda: (x := _desync(probe)) is not None and x.rejected.get(reason, 0) >= 1, 0.5):
                        break
            d = probe.wait(
                lambda: (x := _desync(probe)) is not None and all(x.rejected.get(r, 0) >= 1 for r in bad) and x,
                WAIT_S,
                f"rejections {list(bad)}",
            )
            assert not d.lost, d.reasons
            time.sleep(0.2)
            after = probe.got("/twin/joint_states")
            assert len(after) > 10
            for m in after:  # the twin never took a bad message
                assert np.abs(np.asarray(m.position[:7]) - q0).max() < 1e-6

            # a far-away object observation: the twin is lost (object residual)
            far = PoseStamped()
            far.header.frame_id = "world"
            far.pose.position.x, far.pose.position.y, far.pose.position.z = 1.5, -1.5, 0.3
            far.pose.orientation.w = 1.0
            far.header.stamp = probe.stamp()
            obj.publish(far)
            d = probe.wait(lambda: (x := _desync(probe)) is not None and x.lost and x, WAIT_S, "lost after a far pose")
            assert any("object mug" in r for r in d.reasons), d.reasons
            assert d.object_residual_m["mug"] > 0.5
            moved = probe.wait(
                lambda: (m := probe.last("/twin/objects/mug/pose")) is not None and m.pose.position.x > 0.7 and m,
                WAIT_S,
                "the twin's mug pulled toward the observation",
            )
            assert moved.header.frame_id == "world"

            # the robot stops publishing: lost (stale), then back in sync when it resumes
            stream.running.clear()
            t_stop = time.monotonic()
            d = probe.wait(
                lambda: (x := _desync(probe)) is not None and x.lost and any("stale" in r for r in x.reasons) and x,
                WAIT_S,
                "lost after the publisher stopped",
            )
            print(
                f"\nlost reported {time.monotonic() - t_stop:.2f} s after /joint_states stopped "
                f"(stale_timeout_s 0.5): {d.reasons}"
            )
            assert d.message_age_s > 0.5
            stream.running.set()
            probe.wait(
                lambda: (
                    (x := _desync(probe)) is not None
                    and x.message_age_s < 0.5
                    and not any("stale" in r for r in x.reasons)
                ),
                WAIT_S,
                "fresh joint states again",
            )
        finally:
            stream.stop()


# ---- policy_runner -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small untrained MLP checkpoint for reach (state observations, discrete actions)."""
    import torch

    from policies import PolicySpec, save_checkpoint
    from policies.interface import make_policy
    from twin.env import TwinEnv

    torch.manual_seed(0)
    env = TwinEnv("reach")
    policy = make_policy("mlp", {}, PolicySpec.from_env(env, obs_keys=["state"]))
    path = tmp_path_factory.mktemp("live") / "ckpt_reach_mlp"
    save_checkpoint(policy, path, training_step=0)
    env.close()
    return path


def _runner_status(probe) -> dict:
    m = probe.last("/policy_runner/status")
    return json.loads(m.data) if m is not None else {}


def _runner_sees_arm(probe) -> bool:
    """policy_runner's status says it has a usable /joint_states (an episode can start)."""
    return bool(_runner_status(probe).get("arm_state"))


def test_policy_runner_drives_the_twin_and_publishes_joint_commands(ros, checkpoint):
    steps = 8
    # max_lag_rad 0: the twin runs regardless of the (static) fake arm; see the next test
    desc = NodeDesc(
        "policy_runner",
        "policy_runner",
        {"task": "reach", "checkpoint": str(checkpoint), "max_steps": steps, "max_lag_rad": 0.0},
    )
    with GraphRunner([desc]), Probe() as probe:
        pub = probe.pub("/joint_states", JointState)
        for topic, kind in (
            ("/twin/joint_commands", JointState),
            ("/twinrank/action", Float32MultiArray),
            ("/twinrank/obs/state", Float32MultiArray),
            ("/policy_runner/status", String),
        ):
            probe.sub(topic, kind)
        probe.wait_matched(pub)
        probe.wait_publisher("/twin/joint_commands")
        # no arm state yet: the twin would start away from the arm; the start is refused
        r = probe.call("/policy_runner/start")
        assert not r.success and "no usable /joint_states" in r.message, r.message
        assert json.loads(probe.wait(lambda: probe.last("/policy_runner/status"), WAIT_S).data)["arm_state"] is False
        q_real = HOME + np.array([0.05, -0.05, 0.05, 0.05, 0.0, -0.05, 0.1])
        stream = Streamer(probe, pub, q_real, rate_hz=100.0, width=0.06)
        try:
            probe.wait(
                lambda: _runner_sees_arm(probe),
                WAIT_S,
                "the policy runner to see the arm",
            )
            r = probe.call("/policy_runner/start")
            assert r.success, r.message
            again = probe.call("/policy_runner/start")
            assert not again.success and "running" in again.message
            done = probe.wait(
                lambda: (
                    (m := probe.last("/policy_runner/status")) is not None
                    and (s := json.loads(m.data))["done"]
                    and s["episode"] == 0
                    and s
                ),
                WAIT_S,
                "episode done",
            )
        finally:
            stream.stop()
        probe.wait(lambda: len(probe.got("/twin/joint_commands")) >= steps * 10, WAIT_S, "every joint command")
        assert done["reason"] == "max_steps" and done["step"] == steps
        cmds = probe.got("/twin/joint_commands")
        actions = probe.got("/twinrank/action")
        states = probe.got("/twinrank/obs/state")
        with probe.lock:
            times = [t for t, _ in probe.msgs["/twin/joint_commands"]]
        assert len(cmds) == steps * 10  # 10 Hz control, 100 Hz commands
        assert len(actions) == steps and len(states) == steps
        assert list(cmds[0].name) == list(JOINT_NAMES)
        q = np.array([c.position[:7] for c in cmds])
        # the twin robot started at the real robot's joints (no jump when the arm follows)
        assert np.abs(q[0] - q_real).max() < 0.05, q[0] - q_real
        assert cmds[0].position[7] + cmds[0].position[8] == pytest.approx(0.06, abs=0.01)
        assert np.abs(np.diff(q, axis=0)).max() < 0.1  # smooth: no command jumps
        moved = float(np.abs(q[-1] - q[0]).max() + abs(cmds[-1].position[7] - cmds[0].position[7]))
        assert moved > 1e-3, "the policy did not move the twin robot"
        span = times[-1] - times[0]
        # paced in real time: never faster than the control rate (slower on a loaded machine)
        assert span > 0.4, f"commands of {steps} control steps at 10 Hz spanned only {span:.2f} s"
        a = np.asarray(actions[0].data)
        assert a.shape == (1,) and 0 <= a[0] < 14  # reach: one discrete action
        assert len(states[0].data) == int(states[0].layout.dim[0].size) and len(states[0].data) > 15
        print(
            f"\npolicy_runner: {len(cmds)} joint commands over {span:.2f} s for {steps} control steps; "
            f"twin robot moved {moved:.3f} rad"
        )


def test_policy_runner_pauses_the_twin_while_the_arm_lags(ros, checkpoint):
    """A real arm that does not follow: the twin never gets more than max_lag_rad ahead of it
    (the bridge would refuse such targets) and the episode stops after lag_timeout_s."""
    lag = 0.05
    desc = NodeDesc(
        "policy_runner",
        "policy_runner",
        {"task": "reach", "checkpoint": str(checkpoint), "max_steps": 50, "max_lag_rad": lag, "lag_timeout_s": 1.0},
    )
    with GraphRunner([desc]), Probe() as probe:
        pub = probe.pub("/joint_states", JointState)
        probe.sub("/twin/joint_commands", JointState)
        probe.sub("/policy_runner/status", String)
        probe.wait_matched(pub)
        probe.wait_publisher("/twin/joint_commands")
        stream = Streamer(probe, pub, HOME, rate_hz=100.0)
        try:
            probe.wait(
                lambda: _runner_sees_arm(probe),
                WAIT_S,
                "the policy runner to see the arm",
            )
            assert probe.call("/policy_runner/start").success
            paused = probe.wait(
                lambda: (
                    (m := probe.last("/policy_runner/status")) is not None and (s := json.loads(m.data))["paused"] and s
                ),
                WAIT_S,
                "the twin pausing",
            )
            done = probe.wait(
                lambda: (
                    (m := probe.last("/policy_runner/status")) is not None and (s := json.loads(m.data))["done"] and s
                ),
                WAIT_S,
                "the episode stopping",
            )
        finally:
            stream.stop()
    assert paused["lag_rad"] > lag and done["reason"] == "real_arm_not_following", done
    q = np.array([c.position[:7] for c in probe.got("/twin/joint_commands")])
    ahead = np.abs(q - HOME).max(axis=1)
    assert ahead.max() < lag + 0.05, ahead.max()  # at most one command period past the limit
    assert done["step"] < 50


# ---- recorder ----------------------------------------------------------------------------------
def test_recorder_bag_reads_back_with_episodes_and_outcomes(ros, tmp_path):
    from selection.realdata import bag_info, read_bag

    desc = NodeDesc("recorder", "recorder", {"bag_dir": str(tmp_path), "task": "reach", "domain": "real"})
    with GraphRunner([desc]) as graph, Probe() as probe:
        js = probe.pub("/joint_states", JointState)
        obs = probe.pub("/twinrank/obs/state", Float32MultiArray)
        act = probe.pub("/twinrank/action", Float32MultiArray)
        mug = probe.pub("/objects/mug/pose", PoseStamped, depth=10)
        for p in (js, obs, act):
            probe.wait_matched(p)
        probe.wait(lambda: mug.get_subscription_count() >= 1, WAIT_S, "the recorder discovering /objects/mug/pose")
        from twin.live.common import floats_msg

        def run_episode(k: int, n: int) -> None:
            for i in range(n):
                q = HOME + 0.01 * i
                js.publish(probe.joint_state(q, 0.04 + 0.001 * k))
                if i % 5 == 0:
                    obs.publish(floats_msg(np.arange(22, dtype=np.float32) + k))
                    act.publish(floats_msg(np.array([k + 1], dtype=np.float32)))
                    m = PoseStamped()
                    m.header.stamp = probe.stamp()
                    m.header.frame_id = "world"
                    m.pose.position.x, m.pose.orientation.w = 0.5 + 0.01 * i, 1.0
                    mug.publish(m)
                time.sleep(0.004)

        js.publish(probe.joint_state(HOME))  # outside any episode: not recorded
        _acked(js)
        time.sleep(0.1)  # taken (and discarded) by the recorder's 20 ms poll
        assert probe.call("/recorder/start_episode").success
        assert not probe.call("/recorder/start_episode").success  # one episode at a time
        run_episode(0, 60)
        for p in (js, obs, act, mug):  # every message of the episode has reached the recorder
            _acked(p)
        r = probe.call("/recorder/end_episode_success")
        assert r.success, r.message
        assert not probe.call("/recorder/end_episode_failure").success  # nothing open
        assert probe.call("/recorder/start_episode").success
        run_episode(1, 40)
        for p in (js, obs, act, mug):
            _acked(p)
        assert probe.call("/recorder/end_episode_failure").success
        node = graph.node("recorder")
        close = probe.call("/recorder/close_bag")
        assert close.success, close.message
        bags = list(node.bags)
        assert not node.dropped, node.dropped
    assert len(bags) == 1 and bags[0].parent == tmp_path
    info = bag_info(bags[0])
    assert info["meta"]["task"] == "reach" and info["meta"]["domain"] == "real"
    eps = read_bag(bags[0], require=("joint_states", "episode", "meta", "action", "obs/state"))
    assert [e.episode for e in eps] == [0, 1]
    assert [e.success for e in eps] == [True, False]
    assert eps[1].failure_reason == "operator_marked_failure"
    assert [e.length for e in eps] == [60, 40]  # every joint state inside, none outside
    e0 = eps[0]
    assert e0.robot == "fr3" and e0.task == "reach"
    np.testing.assert_allclose(e0.joint_pos[:, :7], HOME + 0.01 * np.arange(60)[:, None], atol=1e-9)
    np.testing.assert_allclose(e0.joint_pos[:, 7], 0.04, atol=1e-9)
    assert e0.obs["state"].shape == (12, 22) and e0.actions.shape == (12, 1)
    assert float(eps[1].actions[0, 0]) == 2.0
    assert e0.object_poses["mug"].pose.shape[1] == 7 and len(e0.object_poses["mug"].t) >= 10


# ---- the whole graph ---------------------------------------------------------------------------
def _franka_bridge_available() -> str:
    """'' when franka_bridge + franka-sim can run here, else why not."""
    try:
        import twin.live.franka_bridge  # noqa: F401
        from twin.live.fake_hardware import ARM_PORT, franka_sim_missing, tcp_listening
    except ImportError as exc:
        return f"franka_bridge not importable ({exc})"
    if tcp_listening("127.0.0.1", ARM_PORT):  # libfranka always dials 1337: one sim per network namespace
        return f"port {ARM_PORT} is taken by another franka-sim (run under scripts/isolated, as make test does)"
    return franka_sim_missing()


def _camera_bridge_missing() -> str:
    """'' when camera_bridge with software RealSense devices can run here, else why not."""
    try:
        import twin.live.camera_bridge  # noqa: F401
        from twin.live.fake_hardware import import_pyrealsense2

        import_pyrealsense2()
    except ImportError as exc:
        return f"camera_bridge / pyrealsense2 not importable ({exc})"
    return ""


class FakeArm:
    """Stand-in for franka_bridge when it (or franka-sim) is unavailable: /joint_states at
    250 Hz following /twin/joint_commands with a first-order lag."""

    def __init__(self, probe: Probe) -> None:
        self.pub = probe.pub("/joint_states", JointState)
        self.stream = Streamer(probe, self.pub, HOME, rate_hz=250.0)
        probe.hooks["/twin/joint_commands"] = self._on_cmd
        self._lag = threading.Thread(target=self._run, daemon=True)
        self.target = HOME.copy()
        self._stop = threading.Event()
        self._lag.start()

    def _on_cmd(self, t: float, msg: JointState) -> None:
        self.target = np.asarray(msg.position[:7])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.stream.q = self.stream.q + 0.2 * (self.target - self.stream.q)
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self.stream.stop()


def test_whole_graph_policy_in_twin_real_arm_follows_and_recorder_logs(ros, checkpoint, tmp_path):
    """franka_bridge (franka-sim through franky, when available), twin_sync, policy_runner and
    the recorder, each as its own process from the installed executables (lib/twin/<node>, as
    ros2 launch runs them): the twin follows the arm, the policy drives the twin, the arm
    follows the twin, the episode is recorded and read back."""
    from selection.realdata import read_bag
    from twin.live.ament import check_ament

    assert not check_ament(), "run `twinrank live install-ament` (make install does)"
    why_not = _franka_bridge_available()
    if os.environ.get("TWINRANK_LIVE_FAKE_ARM"):  # force the stand-in (debugging)
        why_not = "TWINRANK_LIVE_FAKE_ARM is set"
    hardware = not why_not
    cameras = hardware and not _camera_bridge_missing()
    steps = 12
    nodes = live_graph(
        task="reach",
        checkpoint=str(checkpoint),
        use_fake_hardware=True,
        hardware=hardware,
        cameras="cam_left" if cameras else "",
        bag_dir=str(tmp_path),
        render_rate_hz=0.0,
        joint_state_rate_hz=250.0,
        command_timeout_s=0.5,
        track_objects=False,  # object tracking in the graph: test_live_tracking
    )
    for n in nodes:
        if n.name == "policy_runner":  # a short episode, the twin slow enough for franka-sim to track
            n.parameters.update(max_steps=steps, max_joint_velocity_scale=0.15)
        if n.name == "camera_bridge":  # small, slow software-camera renders: 2 shared cores
            n.parameters.update(width=128, height=96, fps=5, publish_points=False)
    names = [n.name for n in nodes]
    assert names == (["franka_bridge"] + ["camera_bridge"] * cameras if hardware else []) + [
        "twin_sync",
        "policy_runner",
        "recorder",
    ]
    print(f"\nwhole graph: {names}" + ("" if hardware else f" + a fake arm publisher ({why_not})"))
    t_start = time.monotonic()
    with Probe() as probe:
        for topic, kind in (
            ("/joint_states", JointState),
            ("/twin/joint_states", JointState),
            ("/twin/joint_commands", JointState),
            ("/twin/desync", String),
            ("/franka_bridge/status", String),
            ("/policy_runner/status", String),
            ("/recorder/status", String),
            ("/cam_left/color/image_raw", Image),
        ):
            probe.sub(topic, kind, depth=5 if "image" in topic else 1000)
        fake = None if hardware else FakeArm(probe)
        graph = GraphRunner(nodes, mode="process", installed=True, log_dir=tmp_path / "logs")
        graph.start()

        try:
            probe.wait(lambda: len(probe.got("/joint_states")) > 20, 3 * WAIT_S, "/joint_states from the arm")
            if cameras:
                probe.wait(lambda: probe.got("/cam_left/color/image_raw"), 3 * WAIT_S, "software-camera images")
            probe.wait(lambda: (d := _desync(probe)) is not None and not d.lost, 3 * WAIT_S, "twin_sync in sync")
            t_up = time.monotonic() - t_start

            def follow_err() -> float:
                real, tw = probe.last("/joint_states"), _twin_q(probe)
                return float(np.abs(np.asarray(real.position[:7]) - tw).max())

            assert probe.wait(lambda: follow_err() < 1e-3, WAIT_S), f"twin vs arm: {follow_err()} rad"
            if hardware:
                r = probe.call("/franka_bridge/arm")
                assert r.success, r.message
            q_before = np.asarray(probe.last("/joint_states").position[:7])
            # the twin starts where the arm is, and every step is logged: wait (as an operator
            # would) until the policy runner sees the arm and the recorder listens to it (DDS
            # discovery takes seconds on a loaded host)
            probe.wait(
                lambda: _runner_sees_arm(probe) and _runner_status(probe).get("log_subscribers", 0) >= 1,
                3 * WAIT_S,
                "the policy runner to see the arm's /joint_states and the recorder's subscriptions",
            )
            assert probe.call("/recorder/start_episode").success
            r = probe.call("/policy_runner/start")
            assert r.success, r.message
            start_msg = r.message
            probe.wait(
                lambda: (
                    (m := probe.last("/policy_runner/status")) is not None
                    and json.loads(m.data)["done"]
                    and json.loads(m.data)["episode"] == 0
                ),
                3 * WAIT_S,
                "the policy episode to finish",
            )
            first_cmd = np.asarray(probe.got("/twin/joint_commands")[0].position[:7])
            last_cmd = np.asarray(probe.last("/twin/joint_commands").position[:7])

            def arm_err() -> float:
                return float(np.abs(np.asarray(probe.last("/joint_states").position[:7]) - last_cmd).max())

            def reached_or_rearm() -> bool:
                # a stop that disarmed the bridge (speed guard, lost connection on a starved host)
                # is followed by arming again, as an operator would; reflexes recover by themselves
                st = json.loads(m.data) if hardware and (m := probe.last("/franka_bridge/status")) else {}
                if hardware and st.get("connected") and not st.get("armed") and not st.get("error"):
                    probe.call("/franka_bridge/arm")
                return arm_err() < 0.02

            reached = probe.wait(reached_or_rearm, 3 * WAIT_S)
            q_after = np.asarray(probe.last("/joint_states").position[:7])
            policy_status = json.loads(probe.last("/policy_runner/status").data)
            # twin follow latency while the arm moves: each twin state shows one arm sample
            # exactly; latency = the twin state's arrival at the probe - that sample's header
            # stamp (the bridge's time of the robot state; same clock). Moving samples only
            # (a position seen once), so that the match is unambiguous.
            with probe.lock:
                real = list(probe.msgs["/joint_states"])
                twin = list(probe.msgs["/twin/joint_states"])
            stamps: dict[tuple, list[float]] = defaultdict(list)
            for _, m in real:
                stamps[tuple(m.position[:7])].append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)
            shown: dict[tuple, float] = {}  # the first twin state showing each sample
            for t, m in twin:
                if len(stamps.get(k := tuple(m.position[:7]), ())) == 1:
                    shown.setdefault(k, t)
            follow = np.array([t - stamps[k][0] for k, t in shown.items()])
            arrive = {tuple(m.position[:7]): t for t, m in real}
            hop = np.array([t - arrive[k] for k, t in shown.items()])  # after the probe got the sample
            assert probe.call("/recorder/end_episode_success").success
            if hardware:
                assert probe.call("/franka_bridge/disarm").success
            # the arm has settled: the twin mirrors it again
            twin_err = probe.wait(lambda: (e := follow_err()) < 1e-3 and e + 1e-12, WAIT_S) or follow_err()
            assert probe.call("/recorder/close_bag").success
            recorder_status = json.loads(probe.last("/recorder/status").data) if probe.last("/recorder/status") else {}
        except AssertionError as exc:
            graph.stop(timeout=20.0)
            raise AssertionError(f"{exc}\nnode logs:\n{graph.log_tails(1500)}") from None
        finally:
            graph.stop(timeout=20.0)
            if fake is not None:
                fake.stop()
        exited = graph.returncodes
    assert reached, (
        f"the arm did not follow the twin: error {arm_err():.4f} rad; arm at start {q_before}, "
        f"first command {first_cmd}, last {last_cmd}; {start_msg}; logs:\n{graph.log_tails(1500)}"
    )
    moved = float(np.abs(q_after - q_before).max())
    assert moved > 1e-3, "the arm did not move"
    # the twin showed the arm's samples while it moved (latencies are printed, not bounded: they
    # measure the machine's load as much as the code; `twinrank live bench` is the benchmark)
    assert len(follow) > 5, len(follow)
    assert twin_err < 1e-3
    bags = [b for b in tmp_path.iterdir() if b.is_dir() and b.name != "logs"]
    assert len(bags) == 1, (bags, recorder_status)
    eps = read_bag(bags[0], require=("joint_states", "episode", "action", "obs/state"))
    assert len(eps) == 1 and eps[0].success is True and eps[0].domain == "proxy-real"
    assert eps[0].actions.shape[0] == steps and eps[0].obs["state"].shape[0] == steps
    assert eps[0].length > 50
    if cameras:  # camera_bridge -> recorder -> selection reader
        info = eps[0].camera_info["cam_left"]
        assert (info.width, info.height) == (128, 96) and info.K[0, 0] > 0
    print(
        f"whole graph up in {t_up:.1f} s; arm moved {moved:.3f} rad following the policy twin "
        f"(twin paused {policy_status['paused_ticks']} command periods waiting for it); twin follows the arm "
        f"(arm state stamp -> twin state at the probe): p50 {np.median(follow) * 1e3:.1f} ms, p90 "
        f"{np.percentile(follow, 90) * 1e3:.1f} ms, p99 {np.percentile(follow, 99) * 1e3:.1f} ms over {len(follow)} "
        f"samples (twin state after the probe got the sample: p50 {np.median(hop) * 1e3:.1f} ms, p90 "
        f"{np.percentile(hop, 90) * 1e3:.1f} ms, p99 "
        f"{np.percentile(hop, 99) * 1e3:.1f} ms); episode of {eps[0].length} joint states, {steps} actions; node exit codes {exited}"
    )
