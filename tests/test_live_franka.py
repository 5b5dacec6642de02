"""franka_bridge against franka-sim through franky: real processes on loopback, no mocks.

franka-sim (MuJoCo FR3 speaking libfranka's protocol) runs from its own venv on
127.0.0.1:1337/1338, enforcing the FCI's communication constraints as a real FR3 does (a
client that misses 20 cycles gets a ``communication_constraints_violation`` reflex); the
bridge runs as its own process (``python -m twin.live.franka_bridge``) exactly as
``ros2 launch`` starts it; this test process is a plain rclpy peer.

Verdicts do not depend on machine load. A loaded host stalls the bridge's state loop or the
simulator (measured on a busy 2-core machine: gaps of 50-350 ms between robot states,
simulator at 0.35-0.9x real time); then the arm must stop safely (reflex, watchdog, guard or
lost connection, reported in the status) and follow again once the stream is back (by itself,
or after re-arming when the stop disarmed it). Tracking is judged only where the state stream
is *live*: bridge status windows with no gap between robot states over LIVE_GAP_S and the
robot clock at >= LIVE_RTF of real time, while following, from SETTLE_S after such a
stretch begins. The tests stream until they have enough live time (within a generous budget).

Tolerances (stated, and printed with the measured figures; run with ``-s`` to see them):
- follow (live windows): a 0.25 Hz, 0.1 rad sine on three joints streamed at 100 Hz is
  tracked, after removing the follow lag, within FOLLOW_TOL_RAD (95 % of samples, max joint
  error) and FOLLOW_MAX_RAD (99 %); the lag (command stamp to robot-state stamp) is below
  FOLLOW_LAG_MAX_S; a held target is reached within HOLD_TOL_RAD; measured joint speeds stay
  within the velocity scale of the FR3 limits (+ 10 %);
- disarmed: joints move less than STILL_TOL_RAD while far targets are streamed;
- watchdog: after the commands stop the arm stops well short of its last target and stays
  still;
- stall (the bridge frozen 0.4 s mid-follow): the arm moves less than STALL_MOVE_TOL_RAD
  across the stall (franka-sim without enforced constraints ran on 0.106 rad), the reflex is
  reported and recovered, and following resumes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# ROS environment: loopback discovery, this venv's ament index, logs in a temp dir, a domain
# of our own so parallel sessions do not see each other. Set before rclpy is imported.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ["ROS_HOME"] = os.environ.get("TWINRANK_TEST_ROS_HOME") or tempfile.mkdtemp(prefix="ros-home-")
os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)  # same in every test module of a run
os.environ.pop("ROS_LOCALHOST_ONLY", None)

franky = pytest.importorskip("franky", reason="franky-control not installed (`make install`)")
rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (`make install`)")

from twin.lifeline import spawn  # noqa: E402
from twin.live import fake_hardware as fh  # noqa: E402
from twin.live.franka_bridge import FR3_DQ_MAX, STATE_STALL_S  # noqa: E402
from twin.live.interfaces import JOINT_NAMES, pack_joints  # noqa: E402

SCALE = 0.2  # bridge velocity/acceleration/jerk scale in these tests
CMD_TIMEOUT = 0.5  # generous: the test process itself must stream commands on a busy machine
FOLLOW_TOL_RAD = 0.015  # 95th percentile of the per-sample max joint error, after the lag
FOLLOW_MAX_RAD = 0.04  # 99th percentile
FOLLOW_LAG_MAX_S = 0.3
HOLD_TOL_RAD = 0.005
STILL_TOL_RAD = 0.002
STALL_MOVE_TOL_RAD = 0.01
# the state stream is live: no gap over LIVE_GAP_S between robot states, robot clock >= LIVE_RTF
LIVE_GAP_S = STATE_STALL_S
LIVE_RTF = 0.7  # the follow loop's gain makes up for a slower robot (at 0.7x: < 4 mrad of extra error)
SETTLE_S = 0.5  # tracking is judged from this long after the stream became live
FOLLOW_LIVE_S = 3.0  # live following wanted for the tracking verdict
MIN_JUDGED_S = 1.0  # ... and needed: with less (an overloaded machine) tracking is not judged
CMD_GAP_S = 0.05  # a pause in the commands (this test's thread starved, or their delivery) ...
CMD_SETTLE_S = 0.7  # ... and the catch-up after it are not judged: no command, nothing to track
BUDGET_S = 180.0  # streaming time allowed to collect it on a loaded machine

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    why = fh.franka_sim_unavailable()
    if why:
        pytest.skip(why)
    s = fh.FrankaSim("127.0.0.1", log_path=tmp_path_factory.mktemp("sim") / "franka-sim.log")
    s.start()
    yield s
    s.stop()


BRIDGE_NAMES = (
    "/joint_states",
    "/twin/joint_commands",
    "/franka_bridge/status",
    "/franka_bridge/arm",
    "/franka_bridge/disarm",
)


def _bridge_cmd(name: str = "franka_bridge", prefix: str = "", **params: Any) -> list[str]:
    """``prefix``: the bridge's topics and services under it (a second bridge beside the
    module's; the probe takes the same prefix)."""
    args = [sys.executable, "-m", "twin.live.franka_bridge", "--ros-args", "-r", f"__node:={name}"]
    for topic in BRIDGE_NAMES if prefix else ():
        args += ["-r", f"{topic}:={prefix}{topic}"]
    for k, v in params.items():
        v = ("true" if v else "false") if isinstance(v, bool) else v
        args += ["-p", f"{k}:={v}"]
    return args


def _renice() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    except OSError:
        pass


class BridgeProc:
    def __init__(self, log_path: Path, name: str = "franka_bridge", prefix: str = "", **params: Any) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # Like libfranka with RealtimeConfig.Enforce on a realtime kernel, give the 1 kHz client a
        # higher priority than the rest of a busy test machine (best effort: root/CAP_SYS_NICE);
        # its own session, so that the priority also holds against other sessions (autogroups)
        self.proc = spawn(
            _bridge_cmd(name, prefix, **params),
            nice=-5,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=dict(os.environ),
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class Probe:
    """The test's own rclpy node: records /joint_states (taken in batches from a polling thread:
    cheap at 1 kHz) and the bridge status, calls services, publishes commands."""

    def __init__(self, prefix: str = "") -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from twin.live.common import PolledSubscription, joint_qos

        self.JointState = JointState
        self.Trigger = Trigger
        self.node = rclpy.create_node("franka_probe" + prefix.replace("/", "_"))
        self.lock = threading.Lock()
        self.states: list[tuple[float, np.ndarray, np.ndarray]] = []  # (arrival, q, dq)
        self.stamped: list[tuple[float, np.ndarray, np.ndarray]] = []  # (bridge stamp, q, dq): robot-side timing
        self.status: dict = {}
        self.status_log: list[dict] = []
        self.names: list[str] = []
        self.js = PolledSubscription(self.node, JointState, f"{prefix}/joint_states", joint_qos(), "js_sampler")
        assert self.js.available
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, f"{prefix}/franka_bridge/status", self._on_status, qos)
        self.cmd_pub = self.node.create_publisher(JointState, f"{prefix}/twin/joint_commands", joint_qos())
        self.arm_cli = self.node.create_client(Trigger, f"{prefix}/franka_bridge/arm")
        self.disarm_cli = self.node.create_client(Trigger, f"{prefix}/franka_bridge/disarm")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self.poll_thread = threading.Thread(target=self._poll, daemon=True)
        self.poll_thread.start()

    def _spin(self) -> None:
        while not self._stop and rclpy.ok():
            self.ex.spin_once(timeout_sec=0.05)

    def _poll(self) -> None:
        while not self._stop:
            for msg, received in self.js.take(limit=5000):
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                q, dq = np.asarray(msg.position[:7]), np.asarray(msg.velocity[:7])
                with self.lock:
                    if not self.names:
                        self.names = list(msg.name)
                    self.stamped.append((stamp, q, dq))
                    self.states.append((time.monotonic(), q, dq))
                    for buf in (self.stamped, self.states):
                        if len(buf) > 400_000:
                            del buf[:100_000]
            time.sleep(0.005)

    def _on_status(self, msg) -> None:
        d = json.loads(msg.data)
        with self.lock:
            self.status = d
            self.status_log.append(d)

    # helpers
    def latest_q(self) -> np.ndarray:
        with self.lock:
            return self.states[-1][1].copy()

    def states_since(self, t0: float):
        with self.lock:
            return [s for s in self.states if s[0] >= t0]

    def statuses_since(self, t0: float) -> list[dict]:
        with self.lock:
            return [d for d in self.status_log if d.get("time", 0.0) >= t0]

    def wait_for(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                st = dict(self.status)
            if pred(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last status {self.status}")

    def call(self, client, timeout: float = 10.0):
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        fut = client.call_async(self.Trigger.Request())
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fut.done(), f"service {client.srv_name} did not answer in {timeout} s"
        return fut.result()

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def command(self, q, width: float = 0.08) -> float:
        """Publish a twin command; returns its stamp (ROS clock, as the bridge stamps states)."""
        msg = self.JointState()
        now = self.node.get_clock().now()
        msg.header.stamp = now.to_msg()
        msg.name, msg.position = pack_joints(q, width)
        self.cmd_pub.publish(msg)
        return now.nanoseconds * 1e-9

    def stamped_since(self, t0: float):
        with self.lock:
            return [s for s in self.stamped if s[0] >= t0]

    def wait_states(self, n: int, timeout: float, since: float | None = None) -> list:
        """Wait (bounded) until ``n`` states stamped after ``since`` (default now) arrived."""
        t0 = self.now() if since is None else since
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.stamped_since(t0)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError(f"only {len(self.stamped_since(t0))} of {n} /joint_states in {timeout} s")

    def wait_matched(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cmd_pub.get_subscription_count() > 0:
                return
            time.sleep(0.05)
        raise AssertionError("franka_bridge never subscribed to /twin/joint_commands")

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.poll_thread.join(timeout=2)
        self.ex.shutdown()
        self.js.close()
        self.node.destroy_node()


class CommandStream:
    """Streams ``target(t)`` at 100 Hz from a thread (the twin); records (stamp, q) sent."""

    def __init__(self, probe: Probe, target: Callable[[float], np.ndarray]) -> None:
        self.probe, self.target = probe, target
        self.sent: list[tuple[float, np.ndarray]] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            q = self.target(time.monotonic() - self.t0)
            self.sent.append((self.probe.command(q), q))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._th.join(timeout=2)


# ---- live windows -------------------------------------------------------------------------------
def live_intervals(statuses: list[dict]) -> list[tuple[float, float]]:
    """(start, end) ROS times where the bridge followed on a live state stream, merged.

    Each status message covers the time since the previous one (``state_gap_max_s`` is the
    largest gap between robot states in it, ``robot_rtf`` the robot clock's rate); the mode
    during a window is the previous message's (every change is published at once). A window
    after a lost status message (a ``seq`` jump) is not trusted."""
    out: list[tuple[float, float]] = []
    for prev, cur in zip(statuses, statuses[1:]):
        live = (
            prev.get("mode") == "follow"
            and prev.get("armed")
            and not prev.get("error")
            and cur.get("seq", 0) == prev.get("seq", 0) + 1
            and cur.get("state_gap_max_s", 1.0) <= LIVE_GAP_S
            and (cur.get("robot_rtf") or 0.0) >= LIVE_RTF
        )
        if not live:
            continue
        if out and abs(out[-1][1] - prev["time"]) < 1e-9:
            out[-1] = (out[-1][0], cur["time"])
        else:
            out.append((prev["time"], cur["time"]))
    return out


def settled(
    intervals: list[tuple[float, float]], settle: float = SETTLE_S, after: float = -np.inf
) -> list[tuple[float, float]]:
    """The parts of ``intervals`` from ``settle`` after each starts (or after ``after``)."""
    return [(max(a, after) + settle, b) for a, b in intervals if b > max(a, after) + settle]


def total(intervals: list[tuple[float, float]]) -> float:
    return float(sum(b - a for a, b in intervals))


def inside(ts: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(len(ts), bool)
    for a, b in intervals:
        mask |= (ts >= a) & (ts <= b)
    return mask


def keep_following(probe: Probe, until: Callable[[], bool], budget: float, events: list[str]) -> None:
    """Re-arm whenever a stop disarmed the bridge (guard, lost connection, failed recovery) and
    wait out reflex recoveries, until ``until()`` or ``budget`` seconds."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline and not until():
        st = dict(probe.status)
        if not st.get("armed") and st.get("connected") and not st.get("error"):
            events.append(st.get("reason", ""))
            probe.call(probe.arm_cli)
        time.sleep(0.1)


def _still(probe: Probe, seconds: float) -> float:
    """Largest joint motion among robot states stamped in the next ``seconds``."""
    s0 = probe.now()
    time.sleep(seconds)
    end = s0 + seconds
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not probe.stamped_since(end):
        time.sleep(0.05)
    qs = np.array([s[1] for s in probe.stamped_since(s0) if s[0] <= end])
    return float(np.abs(qs - qs[0]).max()) if len(qs) else float("nan")


@pytest.fixture(scope="module")
def ros():
    _renice()  # this process streams the twin's commands: keep it as responsive as the bridge
    owned = not rclpy.ok()
    if owned:
        rclpy.init()
    yield
    if owned and rclpy.ok():
        rclpy.shutdown()


@pytest.fixture(scope="module")
def bridge(sim, ros, tmp_path_factory):
    b = BridgeProc(
        tmp_path_factory.mktemp("bridge") / "bridge.log",
        robot_ip="127.0.0.1",
        command_timeout_s=CMD_TIMEOUT,
        max_joint_velocity_scale=SCALE,
        connect_timeout_s=5.0,
        reconnect_period_s=0.5,
    )
    probe = Probe()
    try:
        probe.wait_for(lambda s: s.get("connected"), 60, "the bridge to connect to franka-sim")
        probe.wait_matched()
        probe.wait_states(1, 30.0)  # every test starts from a known joint state
        yield b, probe
    finally:
        probe.close()
        b.stop()


def test_state_stream(bridge):
    b, probe = bridge
    t0 = time.monotonic()
    states = probe.wait_states(200, 30.0)
    rate = len(probe.states_since(t0)) / (time.monotonic() - t0)
    assert probe.names == list(JOINT_NAMES)
    q = states[-1][1]
    # franka-sim starts the arm at [0, 0, 0, -1.57, 0, 1.57, 0.785]
    assert np.abs(q - [0, 0, 0, -1.57, 0, 1.57, 0.785]).max() < 0.3
    st = probe.wait_for(lambda s: s.get("robot_rtf") is not None, 10, "a status with the robot clock rate")
    print(
        f"\n/joint_states received: {rate:.0f} Hz (bridge measured {st.get('state_rate_hz')} Hz, target 1000 Hz; "
        f"robot clock at {st.get('robot_rtf')} of real time, {st.get('state_stalls')} stalls over "
        f"{LIVE_GAP_S * 1000:.0f} ms so far)"
    )
    assert st["connected"] and not st["armed"] and not st["error"], st
    assert {"state_gap_max_s", "state_stalls", "robot_rtf", "time", "seq"} <= set(st)


def test_simulator_binds_loopback_only(bridge, sim):
    """Every socket of the franka-sim process (arm and gripper TCP listeners, the UDP state
    streams of a connected client) is bound to 127.0.0.1."""
    b, probe = bridge
    probe.wait_for(lambda s: s.get("connected") and s.get("gripper"), 30, "the bridge connected with the gripper")
    inodes = set()
    for fd in os.listdir(f"/proc/{sim.pid}/fd"):
        try:
            link = os.readlink(f"/proc/{sim.pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    bound: dict[str, list[str]] = {}
    for table in ("tcp", "udp", "tcp6", "udp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[9] in inodes:
                addr, port = f[1].split(":")
                ip = (
                    socket.inet_ntoa(bytes.fromhex(addr)[::-1])
                    if len(addr) == 8
                    else socket.inet_ntop(socket.AF_INET6, bytes.fromhex(addr))
                )
                bound.setdefault(table, []).append(f"{ip}:{int(port, 16)}")
    print(f"\nfranka-sim sockets: {bound}")
    assert bound.get("udp"), f"no UDP socket found in franka-sim (PID {sim.pid}): {bound}"
    assert bound.get("tcp"), bound
    wrong = [a for addrs in bound.values() for a in addrs if not a.startswith("127.0.0.1:")]
    assert not wrong, f"franka-sim sockets not on loopback: {wrong} (all: {bound})"


def test_disarmed_bridge_refuses_to_move(bridge):
    b, probe = bridge
    resp = probe.call(probe.disarm_cli)
    assert resp.success and "will not move" in resp.message
    q0 = probe.latest_q()
    target = q0 + np.array([0.3, -0.2, 0.2, 0.2, 0.3, 0.2, 0.3])
    s0 = probe.now()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:
        probe.command(target)
        time.sleep(0.01)
    probe.wait_states(1, 30.0, since=probe.now())
    moved = np.abs(np.array([s[1] for s in probe.stamped_since(s0)]) - q0).max()
    assert moved < STILL_TOL_RAD, f"disarmed arm moved {moved:.4f} rad"
    st = probe.wait_for(lambda s: s.get("ignored_disarmed", 0) > 0, 5, "ignored commands to be counted")
    assert "not armed" in st["reason"], st
    assert not st["armed"]


def test_armed_follow_tracks_commands(bridge):
    """Follows a sine while the state stream is live; every stop on the way (reflex, guard,
    lost connection) is followed by following again (re-armed when disarmed)."""
    b, probe = bridge
    q0 = probe.latest_q()
    resp = probe.call(probe.arm_cli)
    assert resp.success, resp.message
    amp, freq = np.array([0.1, 0, 0, 0.1, 0, 0, 0.1]), 0.25
    phase = {"hold": None}

    def target(t: float) -> np.ndarray:
        hold = phase["hold"]
        return hold if hold is not None else q0 + amp * np.sin(2 * np.pi * freq * t)

    s0 = probe.now()
    events: list[str] = []
    stream = CommandStream(probe, target)
    try:

        def enough_follow() -> bool:
            return probe.now() - s0 > 4.0 and total(settled(live_intervals(probe.statuses_since(s0)))) >= FOLLOW_LIVE_S

        keep_following(probe, enough_follow, BUDGET_S, events)
        s_hold = probe.now()
        phase["hold"] = target(time.monotonic() - stream.t0)

        def enough_hold() -> bool:
            return total(settled(live_intervals(probe.statuses_since(s0)), 0.7, s_hold)) >= 0.3

        keep_following(probe, enough_hold, BUDGET_S / 3, events)
        end = probe.now()
    finally:
        stream.stop()
    probe.wait_states(1, 30.0, since=end)
    statuses = probe.statuses_since(s0 - 1.0)
    live = live_intervals(statuses)
    judged = settled(live)
    stamped = probe.stamped_since(s0)
    ts = np.array([x[0] for x in stamped])
    qs = np.array([x[1] for x in stamped])
    dqs = np.array([x[2] for x in stamped])
    cmd_t = np.array([x[0] for x in stream.sent])
    cmd_q = np.array([x[1] for x in stream.sent])
    moving = inside(ts, judged) & (ts < s_hold)
    held = inside(ts, settled(live, 0.7, s_hold)) & (ts <= end)
    last = statuses[-1]
    span = probe.now() - s0
    rtf = [d["robot_rtf"] for d in statuses if d.get("robot_rtf") is not None]
    summary = (
        f"{span:.1f} s streamed, live {total(live):.1f} s, judged {total(judged):.1f} s; robot clock at "
        f"{np.median(rtf) if rtf else float('nan'):.2f} of real time (median); stalls over "
        f"{LIVE_GAP_S * 1000:.0f} ms: {last.get('state_stalls')}, reflexes recovered {last.get('recoveries')}, "
        f"re-armed after {len(events)} stops {events[:3]}"
    )
    # safety holds at any load: never faster than the guard (which stops and disarms)
    guard = 1.5 * SCALE * 1.05
    over = (np.abs(dqs) / FR3_DQ_MAX).max(axis=1) > guard
    assert not over.any() or last.get("rejected", {}).get("guard", 0) > 0, (
        f"the arm moved faster than the guard allows and no guard stop was reported: {summary}"
    )
    if total(judged) < MIN_JUDGED_S or total(settled(live, 0.7, s_hold)) < 0.1:
        pytest.skip(f"tracking not judged: the state stream was live too little on this loaded machine ({summary})")

    # timing from the message stamps (command publish -> robot state read by the bridge), so
    # delivery delays of this test process do not count as lag
    # pauses in the commands: in this test's stream (its thread starved), or in their delivery
    # as the bridge saw it (the command's age in its status, on the same ROS clock)
    gaps = [(g0, g1) for g0, g1 in zip(cmd_t, cmd_t[1:]) if g1 - g0 > CMD_GAP_S]
    gaps += [
        (d["time"] - d["command_age_s"], d["time"])
        for d in statuses
        if d.get("command_age_s") is not None and d.get("time") is not None and d["command_age_s"] > CMD_GAP_S
    ]

    def judged_at(lag: float) -> np.ndarray:
        """Samples judged at this lag: live and moving, their reference not in a pause of the
        command stream (or the catch-up after it)."""
        t_ref = ts - lag
        ok = moving.copy()
        for g0, g1 in gaps:
            ok &= ~((t_ref >= g0) & (t_ref <= g1 + CMD_SETTLE_S))
        return ok

    def err_at(lag: float) -> np.ndarray:
        m = judged_at(lag)
        ref = np.stack([np.interp(ts[m] - lag, cmd_t, cmd_q[:, j]) for j in range(7)], axis=1)
        return np.abs(qs[m] - ref).max(axis=1)

    paused = total([(g0, g1 + CMD_SETTLE_S) for g0, g1 in gaps])
    judged_s = total(judged) * judged_at(0.0).sum() / max(1, int(moving.sum()))
    if judged_s < MIN_JUDGED_S:
        pytest.skip(
            f"tracking not judged: this test's command stream paused {len(gaps)} times ({paused:.1f} s with "
            f"catch-up) on this loaded machine ({summary})"
        )

    lags = np.arange(0.0, 0.5, 0.005)
    errs = [float(np.percentile(err_at(lag), 95)) for lag in lags]
    i = int(np.argmin(errs))
    lag, p95 = float(lags[i]), errs[i]
    p99 = float(np.percentile(err_at(lag), 99))
    raw = float(err_at(0.0).max())
    hold_err = float(np.abs(qs[held] - phase["hold"]).max())
    vmax = float((np.abs(dqs[inside(ts, judged)]) / FR3_DQ_MAX).max())
    m = judged_at(lag)
    ref = np.stack([np.interp(ts[m] - lag, cmd_t, cmd_q[:, j]) for j in range(7)], axis=1)
    print(
        f"\nfollow: {summary}; command stream paused {len(gaps)} times over {CMD_GAP_S * 1000:.0f} ms\n  lag {lag * 1000:.0f} ms, error after lag p95 {p95 * 1000:.1f} mrad, p99 "
        f"{p99 * 1000:.1f} mrad (raw max {raw * 1000:.1f} mrad), hold error {hold_err * 1000:.2f} mrad, "
        f"peak speed {vmax:.3f} of FR3 limits (scale {SCALE})"
    )
    assert p95 < FOLLOW_TOL_RAD and p99 < FOLLOW_MAX_RAD, (
        f"tracking error p95 {p95:.4f} / p99 {p99:.4f} rad ({summary}); log:\n{b.log()}"
    )
    assert lag < FOLLOW_LAG_MAX_S
    assert hold_err < HOLD_TOL_RAD, (hold_err, summary)
    assert vmax <= SCALE * 1.1, (vmax, summary)
    # the arm really moved along the sine where it was judged
    assert np.ptp(qs[m][:, 0]) > 0.8 * np.ptp(ref[:, 0]) and np.ptp(ref[:, 0]) > 0.05


def test_watchdog_stops_motion_when_commands_stop(bridge):
    """Commands toward a target 0.45 rad away stop after a short burst: the arm stops well
    short of it and stays still. A stop for another reason on a loaded machine (a reflex of
    a stalled client) must stop it short too; the watchdog is then tried again."""
    b, probe = bridge
    report = ""
    for attempt in range(5):
        probe.wait_for(lambda s: s.get("connected") and not s.get("error"), 60, "a usable connection")
        assert probe.call(probe.disarm_cli).success  # from idle: the next stop is this attempt's
        assert probe.call(probe.arm_cli).success
        q0 = probe.latest_q()
        target = q0 + np.array([0.45, 0, 0, 0, 0, 0, 0])
        c0 = probe.status.get("recoveries", 0)
        s0 = probe.now()
        for _ in range(5):  # a short burst, then silence
            probe.command(target)
            time.sleep(0.01)
        t_last = time.monotonic()
        st = probe.wait_for(
            lambda s: (
                s.get("mode") in ("stopped", "recovering", "disconnected")
                or not s.get("armed")
                or s.get("recoveries", 0) > c0
            ),
            30.0,
            "the arm to be stopped",
        )
        t_stop = time.monotonic()
        time.sleep(0.5)  # the jerk-limited stop decelerates for a few tens of ms
        still = _still(probe, 0.5)
        q_end = probe.latest_q()
        travelled = float(np.array([s[1][0] for s in probe.stamped_since(s0)]).max() - q0[0])
        print(
            f"\nwatchdog attempt {attempt}: {st['mode']} ({st['reason'][:80]}) {t_stop - t_last:.3f} s after the last "
            f"command (timeout {CMD_TIMEOUT} s); joint1 travelled {travelled:.3f} of 0.45 rad, then moved "
            f"{still * 1000:.2f} mrad in 0.5 s"
        )
        assert travelled < 0.35, f"joint1 travelled {travelled:.3f} rad toward a target 0.45 rad away"
        assert still < STILL_TOL_RAD or st["mode"] != "stopped", still
        report = st["reason"]
        if "watchdog" in st["reason"]:
            assert q_end[0] - q0[0] > 0.005, "the arm never moved toward the target"
            assert st["armed"], "the watchdog stops the arm; it does not disarm"
            break
    else:
        raise AssertionError(f"the watchdog never got to stop the arm in 5 attempts; last stop: {report}")
    # fresh commands resume following (from where it stopped)
    q_now = probe.latest_q()
    deadline = time.monotonic() + 30.0
    while probe.status.get("mode") != "follow" and time.monotonic() < deadline:
        probe.command(q_now)
        time.sleep(0.01)
    assert probe.status.get("mode") == "follow", probe.status
    assert probe.call(probe.disarm_cli).success


def test_killed_simulator_is_reported_and_bridge_recovers(bridge, sim):
    b, probe = bridge
    t_kill = time.monotonic()
    sim.kill()
    try:
        # libfranka notices in 1-2 s; the bridge's own state timeout (3 s) bounds it otherwise
        st = probe.wait_for(lambda s: not s.get("connected"), 30, "the lost connection to be reported")
        t_seen = time.monotonic() - t_kill
        assert st["error"] and "connection lost" in st["reason"], st
        assert not st["armed"]
        resp = probe.call(probe.arm_cli)
        assert not resp.success and "not connected" in resp.message, resp.message
    finally:
        sim.start()  # the module's later tests need the simulator, whatever happened here
    t_up = time.monotonic()
    st = probe.wait_for(lambda s: s.get("connected"), 60, "the bridge to reconnect")
    t_back = time.monotonic() - t_up
    assert "reconnected" in st["reason"] and not st["error"], st
    probe.wait_states(50, 30.0)  # /joint_states resumed
    print(f"\nkill: reported {t_seen:.2f} s after SIGKILL; reconnected {t_back:.2f} s after franka-sim was up")
    assert probe.call(probe.arm_cli).success  # usable again
    assert probe.call(probe.disarm_cli).success


def test_robot_state_stopping_mid_motion_is_a_lost_connection(ros, tmp_path):
    """The controller stops sending states while a motion runs (franka-sim frozen with SIGSTOP
    mid-follow). franky answers ``state`` from its cache while a motion runs, so nothing raises
    before libfranka's 1 s UDP timeout (and, seen once in CI after franka-sim was killed, not in
    30 s). The bridge's own state timeout (0.3 s here) normally reports the loss first and
    disarms; on a loaded machine the bridge's thread may not run for longer than libfranka's
    timeout, and then that timeout reports it: either way it is a lost connection, disarmed.
    When the controller answers again the bridge reconnects and can be armed. A second simulator and
    bridge of its own (127.0.0.3, topics under /frozen) beside the module's."""
    host = "127.0.0.3"
    why = fh.franka_sim_unavailable(host)
    if why:
        pytest.skip(why)
    sim = fh.FrankaSim(host, log_path=tmp_path / "sim.log")
    sim.start()
    b = BridgeProc(
        tmp_path / "bridge.log",
        name="franka_bridge_frozen",
        prefix="/frozen",
        robot_ip=host,
        state_timeout_s=0.3,
        command_timeout_s=CMD_TIMEOUT,
        max_joint_velocity_scale=SCALE,
        connect_timeout_s=5.0,
        reconnect_period_s=0.5,
    )
    probe = Probe("/frozen")
    stream = None
    frozen = False
    try:
        probe.wait_for(lambda s: s.get("connected") and not s.get("error"), 60, "the bridge to connect")
        probe.wait_matched()
        probe.wait_states(1, 30.0)
        assert probe.call(probe.arm_cli).success
        q0 = probe.latest_q()
        stream = CommandStream(probe, lambda t: q0 + np.array([0.1, 0, 0, 0.1, 0, 0, 0]) * np.sin(2 * np.pi * 0.25 * t))
        events: list[str] = []
        keep_following(probe, lambda: probe.status.get("mode") == "follow", 60, events)
        assert probe.status.get("mode") == "follow", (probe.status, events)
        os.kill(sim.pid, signal.SIGSTOP)
        frozen = True
        t_stop = time.monotonic()
        st = probe.wait_for(lambda s: not s.get("connected"), 20, "the frozen robot to be reported")
        t_seen = time.monotonic() - t_stop
        assert st["error"] and not st["armed"], st
        assert "connection lost" in st["reason"], st["reason"]
        assert "no new robot state" in st["reason"] or "Timeout" in st["reason"], st["reason"]
        time.sleep(max(0.0, 1.5 - (time.monotonic() - t_stop)))  # past libfranka's own timeout
        os.kill(sim.pid, signal.SIGCONT)
        frozen = False
        t_up = time.monotonic()
        st = probe.wait_for(lambda s: s.get("connected"), 60, "the bridge to reconnect")
        assert "reconnected" in st["reason"] and not st["error"], st
        print(
            f"\nfrozen robot: reported {t_seen:.2f} s after its states stopped ({st['reason']}); "
            f"reconnected {time.monotonic() - t_up:.2f} s after it answered again"
        )
        stream.stop()
        stream = None
        assert probe.call(probe.arm_cli).success, probe.status
        assert probe.call(probe.disarm_cli).success
    finally:
        if frozen:
            os.kill(sim.pid, signal.SIGCONT)
        if stream is not None:
            stream.stop()
        probe.close()
        b.stop()
        sim.stop()


def test_connect_timeout_reports_unresponsive_robot(ros, tmp_path):
    """A peer that accepts TCP but never answers (libfranka would block ~100 s)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("127.0.0.2", 1337))
    except OSError as exc:
        pytest.skip(f"cannot bind 127.0.0.2:1337 for the silent robot: {exc}")
    srv.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    # its own node name: the module's bridge is still running (same-named nodes are refused)
    b = BridgeProc(
        tmp_path / "bridge.log",
        name="franka_bridge_silent",
        robot_ip="127.0.0.2",
        connect_timeout_s=1.5,
        use_gripper=False,
    )
    probe = Probe()
    try:
        st = probe.wait_for(lambda s: "connect timeout" in s.get("reason", ""), 60, "a connect timeout")
        assert not st["connected"] and st["error"]
        assert "127.0.0.2" in st["reason"] and "1.5" in st["reason"]
        assert held, "the bridge never dialled the silent robot"
    finally:
        probe.close()
        b.stop()
        stop.set()
        th.join(timeout=2)
        for c in held:
            c.close()
        srv.close()


def test_stall_stops_the_arm_and_following_resumes(bridge, sim):
    """A real stall: the bridge process frozen (SIGSTOP) for 0.4 s mid-motion. franka-sim,
    enforcing the FCI's communication constraints like an FR3, aborts the motion with a
    ``communication_constraints_violation`` reflex, or (on a heavily loaded machine, seen with
    two busy loops beside the suite) the connection drops: either way the arm stops where it
    was. The bridge logs the reason, recovers by itself (reflex recovery or reconnection), and
    follows again."""
    b, probe = bridge
    probe.wait_for(lambda s: s.get("connected") and not s.get("error"), 60, "a usable connection")
    assert probe.call(probe.arm_cli).success
    q0 = probe.latest_q()
    stream = CommandStream(probe, lambda t: q0 + np.array([0.1, 0, 0, 0.1, 0, 0, 0]) * np.sin(2 * np.pi * 0.25 * t))
    events: list[str] = []

    def following() -> bool:
        return probe.status.get("mode") == "follow"

    try:
        keep_following(probe, following, 60, events)
        time.sleep(0.5)
        keep_following(probe, following, 60, events)
        c0, k0 = probe.status.get("recoveries", 0), probe.status.get("connects", 0)
        s_stop = probe.now()
        os.kill(b.proc.pid, signal.SIGSTOP)
        time.sleep(0.4)
        os.kill(b.proc.pid, signal.SIGCONT)
        st = probe.wait_for(
            lambda s: s.get("recoveries", 0) > c0 or s.get("connects", 0) > k0,
            60,
            "an automatic recovery (reflex recovered, or reconnected)",
        )
        keep_following(probe, following, 60, events)
        assert following(), probe.status
    finally:
        stream.stop()
    # every gap in the robot states around the stall (the stall itself, the recovery): the arm
    # was standing still across each
    around = probe.stamped_since(s_stop - 1.0)
    ts = np.array([x[0] for x in around])
    qs = np.array([x[1] for x in around])
    gaps = np.flatnonzero(np.diff(ts) > 0.2)
    jumps = [float(np.abs(qs[i + 1] - qs[i]).max()) for i in gaps]
    print(
        f"\nstall: gaps of {[round(float(ts[i + 1] - ts[i]), 2) for i in gaps]} s between robot states, the arm "
        f"moved {[round(j * 1000, 2) for j in jumps]} mrad across them; "
        f"{(st['last_reflex'] or 'connection dropped and re-made').splitlines()[0]}; following again"
    )
    assert len(gaps) and max(ts[i + 1] - ts[i] for i in gaps) >= 0.3, np.diff(ts).max()
    assert max(jumps) < STALL_MOVE_TOL_RAD, f"the arm moved {max(jumps):.4f} rad across the stall"
    if st.get("recoveries", 0) > c0:  # the reflex path: it names the violated constraint
        assert "communication_constraints_violation" in st["last_reflex"], st
    st = probe.status
    assert st["connected"] and not st["error"], st
    assert probe.call(probe.disarm_cli).success
