"""``franka_bridge``: the Franka arm (and hand) over ROS 2, through franky.

Publishes ``/joint_states`` (7 arm joints + two fingers, one message per new robot state up
to ``publish_rate_hz``), follows ``/twin/joint_commands`` while armed, and reports
``/franka_bridge/status`` (JSON, :class:`~twin.live.interfaces.BridgeStatus` + extra fields).

Safety behaviour (see ``twin/live/HARDWARE.md``):

- **Never moves unless armed** (``/franka_bridge/arm``); commands received while disarmed are
  dropped and the status says so. Arming fails, with the reason, when not connected or in an
  error that could not be recovered. A lost connection disarms.
- **Limits before commanding**: targets are checked for names / finiteness, clipped into the
  FR3 joint position limits less ``joint_limit_margin_rad``, and refused when further than
  ``max_target_jump_rad`` from the measured position (a desynced twin). Following is a
  velocity-level loop (``v = v_ff + position_gain * (target - q)``) whose commanded joint
  velocities are clipped to ``max_joint_velocity_scale`` x the FR3 velocity limits before they
  are sent; franky's jerk-limited generator (acceleration / jerk scaled by
  ``acceleration_scale`` / ``jerk_scale``) shapes the transitions. A guard stops and disarms
  when a joint is measured faster than 1.5x its scaled limit.
- **Watchdog**: while following, commands older than ``command_timeout_s`` stop the arm
  (franky ``JointVelocityStopMotion``: a jerk-limited stop); fresh commands resume following.
  Each velocity command also lasts only ``velocity_hold_s``, so a stalled robot thread stops
  the arm too; a frozen or killed bridge process (libfranka's loop included) gets the FR3's
  ``communication_constraints_violation`` reflex, which stops it.
- **Connect timeout**: franky/libfranka has none (a peer that accepts TCP but does not answer
  blocks ~100 s), so connecting runs in a worker thread and is reported as failed after
  ``connect_timeout_s``; attempts repeat every ``reconnect_period_s``.
- **Reflexes**: a motion aborted by a reflex (ControlException) is logged with its reason,
  put in the status, and, with ``auto_recover``, cleared with ``recover_from_errors()``.
- **Lost connection** (network timeout, killed simulator): reported in the status
  (``connected: false``, ``error: true``, reason), the bridge disarms and reconnects when
  the robot answers again. The bridge does not rely on libfranka alone to notice: no new
  robot state for ``state_timeout_s`` while connected is a lost connection too (franky
  answers ``state`` from its cache while it believes a motion runs; a control thread that
  never returns would otherwise leave a dead robot reported as connected). Such a robot
  object is set aside and destroyed only once franky reports its motion ended (its
  destructor joins the control thread: destroyed earlier, a stuck thread would stall the
  bridge).

- **Stalls**: gaps between new robot states are measured (status ``state_gap_max_s`` since the
  previous status, ``state_stalls`` over 50 ms) with the robot clock's rate (``robot_rtf``,
  1 on a real FR3). A stalled bridge gets the FR3's ``communication_constraints_violation``
  reflex after 20 missed cycles (franka-sim enforces it too), which stops the arm.
- **Fake hardware**: with ``use_fake_hardware`` franka-sim is started tied to this process
  (it ends when the bridge dies, by any signal); a simulator already on port 1337 (e.g. left
  from another run) is refused with its PID unless ``reuse_simulator``.

All robot I/O happens on one thread (connect, state reads, motion commands, recovery), which
also takes ``/twin/joint_commands`` from their queue at every turn (with their DDS receive
times); the executor (single-threaded) only serves the arm/disarm services and the status
timer. Gripper reads/moves run on a second thread.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from twin.live.interfaces import (
    ARM_JOINTS,
    FRANKA_BRIDGE_PARAMS,
    JOINT_NAMES,
    NODE_FRANKA_BRIDGE,
    SRV_ARM,
    SRV_DISARM,
    TOPIC_BRIDGE_STATUS,
    TOPIC_JOINT_COMMANDS,
    TOPIC_JOINT_STATES,
    BridgeStatus,
    JointStateError,
    Param,
    unpack_joints,
)

# FR3 joint limits (Franka datasheet, also in franka_description): position [rad], velocity [rad/s]
FR3_Q_MIN = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
FR3_Q_MAX = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])
FR3_DQ_MAX = np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
FR3_DDQ_MAX = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0])
FR3_GRIPPER_MAX_WIDTH = 0.08
# Stop following when a joint moves faster than this multiple of its scaled velocity limit.
GUARD_VELOCITY_FACTOR = 1.5
# A gap between successive new robot states longer than this counts as a stall of the state
# stream (status ``state_stalls``); the FCI sends one state per millisecond.
STATE_STALL_S = 0.05

# Parameters beyond the shared contract (interfaces.FRANKA_BRIDGE_PARAMS); declared with these
# defaults unless the contract already lists them.
EXTRA_PARAMS = (
    Param("reconnect_period_s", 1.0, "Seconds between connection attempts while disconnected."),
    Param(
        "state_timeout_s",
        3.0,
        "No new robot state for this long while connected is a lost connection (the FCI sends one per ms).",
    ),
    Param("follow_rate_hz", 200.0, "Velocity updates per second sent to the robot while following."),
    Param("position_gain", 20.0, "Follow loop: commanded velocity per rad of position error [1/s]."),
    Param("velocity_hold_s", 0.1, "Each velocity command lasts this long: a stalled bridge stops the arm."),
    Param("max_target_jump_rad", 0.5, "Refuse a target further than this from the measured joint position."),
    Param("joint_limit_margin_rad", 0.02, "Targets are clipped this far inside the FR3 position limits."),
    Param("use_gripper", True, "Connect the Franka Hand: finger states on /joint_states, width commands."),
    Param("gripper_speed", 0.1, "Gripper move speed [m/s]."),
    Param("gripper_deadband_m", 0.002, "Width changes smaller than this are not commanded."),
    Param("gripper_rate_hz", 20.0, "Gripper width read rate."),
    Param("status_rate_hz", 5.0, "/franka_bridge/status rate (it is also published on every change)."),
    Param("acceleration_scale", 1.0, "Fraction of the FR3 joint acceleration limits for motions (see HARDWARE.md)."),
    Param("jerk_scale", 1.0, "Fraction of the FR3 joint jerk limits for motions (see HARDWARE.md)."),
    Param("realtime", "auto", "libfranka realtime mode: enforce | ignore | auto (enforce on PREEMPT_RT kernels)."),
    Param(
        "start_franka_sim",
        True,
        "With use_fake_hardware: start franka-sim (refused if port 1337 is taken, unless reuse_simulator).",
    ),
)


def _params() -> tuple[Param, ...]:
    have = {p.name for p in FRANKA_BRIDGE_PARAMS}
    return tuple(FRANKA_BRIDGE_PARAMS) + tuple(p for p in EXTRA_PARAMS if p.name not in have)


def realtime_kernel() -> bool:
    try:
        with open("/sys/kernel/realtime") as f:
            return f.read().strip() == "1"
    except OSError:
        return "PREEMPT_RT" in os.uname().version


class Command:
    """A twin joint target: positions, joint velocity (feed-forward), gripper width, receipt
    time (monotonic) and sequence number."""

    __slots__ = ("q", "v", "width", "recv", "seq")

    def __init__(self, q: np.ndarray, v: np.ndarray, width: float | None, recv: float, seq: int) -> None:
        self.q, self.v, self.width, self.recv, self.seq = q, v, width, recv, seq


def limit_target(
    target: np.ndarray, current: np.ndarray | None, margin: float, max_jump: float
) -> tuple[np.ndarray | None, str]:
    """Apply the position limits: (clipped target or None if refused, note)."""
    lo, hi = FR3_Q_MIN + margin, FR3_Q_MAX - margin
    clipped = np.clip(target, lo, hi)
    note = ""
    over = np.flatnonzero(np.abs(clipped - target) > 1e-9)
    if len(over):
        names = [ARM_JOINTS[i] for i in over]
        note = f"target clipped into joint limits for {names}"
    if current is not None:
        jump = np.abs(clipped - current)
        i = int(np.argmax(jump))
        if jump[i] > max_jump:
            return None, (
                f"refused target: {ARM_JOINTS[i]} is {jump[i]:.3f} rad from the measured position "
                f"(max_target_jump_rad={max_jump})"
            )
    return clipped, note


class FrankaBridge:
    """The node (created by :func:`create_node`; a class holding an rclpy Node so that the
    robot loop can be tested and reasoned about apart from ROS plumbing)."""

    def __init__(self, node: Any, params: dict[str, Any]) -> None:
        import franky
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from twin.live.common import PolledSubscription, joint_qos

        self.franky = franky
        self.node = node
        self.log = node.get_logger()
        self.p = params
        self.robot_ip = "127.0.0.1" if params["use_fake_hardware"] else params["robot_ip"]
        self.rate = max(1.0, float(params["publish_rate_hz"]))
        self.cmd_timeout = float(params["command_timeout_s"])
        self.connect_timeout = float(params["connect_timeout_s"])
        self.state_timeout = float(params["state_timeout_s"])
        self._set_aside: list[tuple[Any, Any]] = []  # (robot, gripper) whose state stopped: see _reap
        scale = float(params["max_joint_velocity_scale"])
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"max_joint_velocity_scale={scale}: must be in (0, 1]")
        self.scale = scale
        for k in ("acceleration_scale", "jerk_scale"):
            if not 0.0 < float(params[k]) <= 1.0:
                raise ValueError(f"{k}={params[k]}: must be in (0, 1]")
        rt = str(params["realtime"]).lower()
        if rt not in ("auto", "enforce", "ignore"):
            raise ValueError(f"realtime={rt!r}: use enforce, ignore or auto")
        enforce = rt == "enforce" or (rt == "auto" and realtime_kernel())
        self.rt_config = franky.RealtimeConfig.Enforce if enforce else franky.RealtimeConfig.Ignore

        self._JointState = JointState
        self._String = String
        self.js_pub = node.create_publisher(JointState, TOPIC_JOINT_STATES, joint_qos())
        status_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.status_pub = node.create_publisher(String, TOPIC_BRIDGE_STATUS, status_qos)
        # /twin/joint_commands are taken by the robot thread itself at every loop turn, with their
        # DDS receive times, rather than handed over by an executor callback: the watchdog and the
        # follow loop then never wait for an executor thread to be scheduled and get the GIL
        self._cmd_poll: PolledSubscription | None = PolledSubscription(
            node, JointState, TOPIC_JOINT_COMMANDS, joint_qos(), "command_sampler"
        )
        if not self._cmd_poll.available:
            self._cmd_poll = None
            self.cmd_sub = node.create_subscription(JointState, TOPIC_JOINT_COMMANDS, self._on_command, joint_qos())
        self.arm_srv = node.create_service(Trigger, SRV_ARM, self._on_arm)
        self.disarm_srv = node.create_service(Trigger, SRV_DISARM, self._on_disarm)

        # shared state (guarded by _lock)
        self._lock = threading.Lock()
        self.status = BridgeStatus(connected=False, armed=False, error=False, reason="starting", mode="disconnected")
        self._cmd: Command | None = None
        self._cmd_seq = 0
        self._last_stamp = -math.inf
        self.rejected: dict[str, int] = {}
        self.ignored_disarmed = 0
        self.recoveries = 0
        self.reflexes: list[str] = []
        self.disconnects = 0
        self.connects = 0
        self.state_rate_hz = 0.0
        self.published = 0
        # gaps between successive new robot states as this bridge reads them: the state stream's
        # health (a stalled host or controller shows here first)
        self.state_gap_max_s = 0.0  # since the previous status message
        self.state_stalls = 0  # gaps over STATE_STALL_S
        # robot time vs wall time (monotonic) of the newest state, and at the previous status:
        # the controller's real-time factor (1 on a real FR3; < 1 when a simulator falls behind)
        self._clock_now: tuple[float, float] | None = None
        self._clock_prev: tuple[float, float] | None = None
        self.robot_rtf: float | None = None
        self._want_stop = False  # disarm requested: io thread stops the motion
        self._armed_at = -math.inf
        self._status_seq = 0
        self._status_lock = threading.Lock()
        self._status_dirty = True

        # robot-thread state
        self.robot = None
        self.gripper = None
        self._connect_thread: threading.Thread | None = None
        self._connect_result: tuple[Any, Any, str] | None = None
        self._connect_started = 0.0
        self._connect_timed_out = False
        self._last_attempt = -math.inf
        self._moving = False
        self._last_dispatch = -math.inf
        self._q = None
        self._dq = None
        self._prev_cmd: tuple[float, np.ndarray] | None = None
        self._v_est = np.zeros(7)
        self._checked_seq = -1
        self._target: np.ndarray | None = None
        self._vff = np.zeros(7)
        self._v_cmd = np.zeros(7)
        self._hold = franky.Duration(int(round(1000 * float(params["velocity_hold_s"]))))
        self._width = 0.0
        self._gripper_target: float | None = None
        self._gripper_lock = threading.Lock()

        self._sim = None
        if params["use_fake_hardware"] and params["start_franka_sim"]:
            self._start_franka_sim()

        sys.setswitchinterval(0.0005)  # the 1 kHz loop shares the GIL with the executor
        self._stop = threading.Event()
        self._io = threading.Thread(target=self._io_loop, name="franka-io", daemon=True)
        self._grip = threading.Thread(target=self._gripper_loop, name="franka-gripper", daemon=True)
        self._io.start()
        self._grip.start()
        period = 1.0 / max(0.2, float(params["status_rate_hz"]))
        self.status_timer = node.create_timer(period, self._publish_status)
        self.log.info(
            f"franka_bridge: robot {self.robot_ip}, /joint_states at up to {self.rate:.0f} Hz, "
            f"watchdog {self.cmd_timeout:.3f} s, velocity scale {self.scale}, "
            f"realtime {'enforce' if enforce else 'ignore'}"
        )

    # ---- fake hardware ---------------------------------------------------------------------
    def _start_franka_sim(self) -> None:
        """Start franka-sim, tied to this process. Something already listening on the port
        (e.g. a simulator left from another run) is refused unless ``reuse_simulator``."""
        from twin.live.fake_hardware import (
            ARM_PORT,
            FakeHardwareError,
            FrankaSim,
            describe_listener,
            port_in_use_message,
            tcp_listening,
        )

        if tcp_listening("127.0.0.1", ARM_PORT):
            if not self.p["reuse_simulator"]:
                raise FakeHardwareError("use_fake_hardware: " + port_in_use_message("127.0.0.1", ARM_PORT))
            self.log.info(
                f"use_fake_hardware: reusing the simulator on 127.0.0.1:{ARM_PORT} "
                f"({describe_listener('127.0.0.1', ARM_PORT)}; reuse_simulator:=true)"
            )
            return
        self.log.info("use_fake_hardware: starting franka-sim on 127.0.0.1:1337")
        self._sim = FrankaSim("127.0.0.1").start()

    # ---- status ----------------------------------------------------------------------------
    def _set(self, **kw: Any) -> None:
        """Update status fields (lock held by caller or not needed); log reason changes."""
        changed = False
        for k, v in kw.items():
            if getattr(self.status, k) != v:
                setattr(self.status, k, v)
                changed = True
        if changed:
            self._status_dirty = True
            if "reason" in kw and kw["reason"]:
                # rclpy forbids one call site logging at two severities: two calls
                if self.status.error:
                    self.log.error(f"franka_bridge: {kw['reason']}")
                else:
                    self.log.info(f"franka_bridge: {kw['reason']}")

    def status_dict(self) -> dict[str, Any]:
        with self._lock:
            d = asdict(self.status)
            cmd = self._cmd
            d.update(
                {
                    "robot_ip": self.robot_ip,
                    "state_rate_hz": round(self.state_rate_hz, 1),
                    "state_gap_max_s": round(self.state_gap_max_s, 4),
                    "state_stalls": self.state_stalls,
                    "robot_rtf": None if self.robot_rtf is None else round(self.robot_rtf, 3),
                    "time": round(self.node.get_clock().now().nanoseconds * 1e-9, 4),
                    "published": self.published,
                    "command_age_s": None if cmd is None else round(time.monotonic() - cmd.recv, 4),
                    "recoveries": self.recoveries,
                    "last_reflex": self.reflexes[-1] if self.reflexes else "",
                    "disconnects": self.disconnects,
                    "connects": self.connects,
                    "rejected": dict(self.rejected),
                    "ignored_disarmed": self.ignored_disarmed,
                    "gripper": self.gripper is not None,
                }
            )
        return d

    def _publish_status(self) -> None:
        """Publish the status (robot thread on changes, executor timer otherwise; one at a time,
        so that ``seq`` and the per-message windows are in publishing order)."""
        with self._status_lock:
            self._publish_status_locked()

    def _publish_status_locked(self) -> None:
        self._status_dirty = False
        now, prev = self._clock_now, self._clock_prev
        if now is None:
            self.robot_rtf = None
        elif prev is None:
            self._clock_prev = now
        elif now[1] - prev[1] >= 0.05:  # else too short a window: keep the last figure
            self.robot_rtf = (now[0] - prev[0]) / (now[1] - prev[1])
            self._clock_prev = now
        self._status_seq += 1
        d = self.status_dict()
        d["seq"] = self._status_seq
        self.state_gap_max_s = 0.0  # each status message covers the time since the previous one
        self.status_pub.publish(self._String(data=json.dumps(d)))

    # ---- ROS callbacks ---------------------------------------------------------------------
    def _reject(self, key: str, why: str) -> None:
        with self._lock:
            self.rejected[key] = self.rejected.get(key, 0) + 1
            n = self.rejected[key]
        if n == 1 or n % 500 == 0:
            self.log.warning(f"franka_bridge: rejected /twin/joint_commands ({key}, {n} so far): {why}")

    def _take_commands(self) -> None:
        """Robot thread: handle the queued /twin/joint_commands (oldest first)."""
        if self._cmd_poll is not None:
            for msg, received in self._cmd_poll.take(limit=1000):
                self._on_command(msg, received)

    def _on_command(self, msg: Any, received: float | None = None) -> None:
        """One command; ``received``: its DDS receive time (ROS clock, s), else now."""
        try:
            q, width = unpack_joints(msg.name, msg.position)
        except JointStateError as exc:
            self._reject("invalid", str(exc))
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp > 0:
            if stamp < self._last_stamp:
                self._reject("out_of_order", f"stamp {stamp:.6f} older than the previous {self._last_stamp:.6f}")
                return
            self._last_stamp = stamp
        if width is not None and not 0.0 <= width <= FR3_GRIPPER_MAX_WIDTH + 1e-6:
            width = float(np.clip(width, 0.0, FR3_GRIPPER_MAX_WIDTH))
        q = np.asarray(q, float)
        now = time.monotonic()
        if received is not None:  # its arrival, on the monotonic clock (the watchdog's)
            now -= max(0.0, time.time() - received)
        v = self._command_velocity(msg, q, stamp if stamp > 0 else now)
        with self._lock:
            armed = self.status.armed
            if armed and now < self._armed_at:
                return  # arrived before arming: only commands sent after arming are followed
            self._cmd_seq += 1
            self._cmd = Command(q, v, width, now, self._cmd_seq)
            if not armed:
                self.ignored_disarmed += 1
                n = self.ignored_disarmed
        if not armed and (n == 1 or n % 1000 == 0):
            self.log.warning(
                f"franka_bridge: ignoring /twin/joint_commands: not armed ({n} ignored); call {SRV_ARM} to follow"
            )
            with self._lock:
                if not self.status.error:
                    self._set(reason="ignoring /twin/joint_commands: not armed")

    def _command_velocity(self, msg: Any, q: np.ndarray, t: float) -> np.ndarray:
        """The twin's joint velocity: the message's velocity field when it carries the 7 arm
        joints, else the difference of successive command positions (low-passed)."""
        if len(msg.velocity) == len(msg.name):
            idx = {n: i for i, n in enumerate(msg.name)}
            if all(n in idx for n in ARM_JOINTS):
                v = np.array([msg.velocity[idx[n]] for n in ARM_JOINTS], float)
                if np.isfinite(v).all():
                    self._prev_cmd = (t, q)
                    return np.clip(v, -FR3_DQ_MAX, FR3_DQ_MAX)
        prev = self._prev_cmd
        self._prev_cmd = (t, q)
        if prev is None or not 1e-4 < t - prev[0] < 0.2:
            self._v_est = np.zeros(7)
            return self._v_est
        raw = np.clip((q - prev[1]) / (t - prev[0]), -FR3_DQ_MAX, FR3_DQ_MAX)
        self._v_est = 0.5 * self._v_est + 0.5 * raw
        return self._v_est

    def _on_arm(self, request: Any, response: Any) -> Any:
        with self._lock:
            st = self.status
            if not st.connected:
                response.success = False
                response.message = f"not armed: robot not connected ({st.reason})"
            elif st.error:
                response.success = False
                response.message = f"not armed: robot in error ({st.reason})"
            else:
                self._cmd = None  # only commands sent after arming are followed
                self._armed_at = time.monotonic()
                self._target = None
                self._set(
                    armed=True,
                    mode="idle",
                    reason=f"armed: following /twin/joint_commands (watchdog {self.cmd_timeout:.3f} s)",
                )
                response.success = True
                response.message = self.status.reason
        self._publish_status()
        return response

    def _on_disarm(self, request: Any, response: Any) -> Any:
        with self._lock:
            was = self.status.armed
            self._want_stop = True
            self._set(
                armed=False,
                mode="idle" if self.status.connected else self.status.mode,
                reason="disarmed: the arm will not move until /franka_bridge/arm",
            )
            response.success = True
            response.message = self.status.reason if was else "already disarmed: the arm will not move"
        self._publish_status()
        return response

    # ---- connection (robot thread) ---------------------------------------------------------
    def _connect_worker(self) -> None:
        franky = self.franky
        robot = gripper = None
        err = ""
        try:
            robot = franky.Robot(self.robot_ip, realtime_config=self.rt_config)
            robot.relative_dynamics_factor = franky.RelativeDynamicsFactor(
                self.scale, float(self.p["acceleration_scale"]), float(self.p["jerk_scale"])
            )
            if robot.has_errors:
                robot.recover_from_errors()
        except Exception as exc:  # NetworkException, IncompatibleVersionException, RealtimeException...
            err = f"{type(exc).__name__}: {exc}"
            robot = None
        if robot is not None and self.p["use_gripper"]:
            try:
                gripper = franky.Gripper(self.robot_ip)
            except Exception as exc:
                self.log.warning(
                    f"franka_bridge: gripper unavailable ({type(exc).__name__}: {exc}); fingers are published as 0"
                )
        self._connect_result = (robot, gripper, err)

    def _try_connect(self, now: float) -> None:
        t = self._connect_thread
        if t is not None:
            if self._connect_result is not None:
                robot, gripper, err = self._connect_result
                self._connect_thread = None
                self._connect_result = None
                if robot is None:
                    with self._lock:
                        self._set(
                            connected=False,
                            error=True,
                            mode="disconnected",
                            reason=f"cannot connect to {self.robot_ip}: {err}",
                        )
                    return
                self.robot, self.gripper = robot, gripper
                self._moving = False
                self._target = None
                with self._lock:
                    self.connects += 1
                    again = self.connects > 1
                    self._set(
                        connected=True,
                        error=False,
                        armed=False,
                        mode="idle",
                        reason=(
                            f"{'re' if again else ''}connected to {self.robot_ip} after "
                            f"{now - self._connect_started:.2f} s"
                        ),
                    )
                return
            if not self._connect_timed_out and now - self._connect_started > self.connect_timeout:
                self._connect_timed_out = True
                with self._lock:
                    self._set(
                        connected=False,
                        error=True,
                        mode="disconnected",
                        reason=(
                            f"connect timeout: {self.robot_ip} did not answer within "
                            f"{self.connect_timeout:.1f} s (is the FCI enabled and the robot "
                            f"reachable?); still trying"
                        ),
                    )
            return
        if now - self._last_attempt < float(self.p["reconnect_period_s"]):
            return
        self._last_attempt = now
        self._connect_started = now
        self._connect_timed_out = False
        self._connect_result = None
        self._connect_thread = threading.Thread(target=self._connect_worker, name="franka-connect", daemon=True)
        self._connect_thread.start()

    def _on_lost(self, exc: BaseException) -> None:
        self.robot = None
        self.gripper = None
        self._moving = False
        self._last_attempt = time.monotonic()
        with self._lock:
            self.disconnects += 1
            self._set(
                connected=False,
                armed=False,
                error=True,
                mode="disconnected",
                reason=f"connection lost: {type(exc).__name__}: {exc}; disarmed, reconnecting",
            )

    # ---- robot loop ------------------------------------------------------------------------
    def _io_loop(self) -> None:
        """Run the robot loop; a bug in it must not silently end robot I/O: log and restart."""
        while not self._stop.is_set():
            try:
                self._robot_loop()
            except Exception as exc:  # pragma: no cover - defensive
                import traceback

                self.log.error(f"franka_bridge: robot loop crashed, restarting: {exc!r}\n{traceback.format_exc()}")
                self.robot = None
                self._moving = False
                time.sleep(0.1)
        self._shutdown_robot()

    def _robot_loop(self) -> None:
        franky = self.franky
        period = 1.0 / self.rate
        msg = self._JointState()
        msg.name = list(JOINT_NAMES)
        last_time = None  # robot time of the last state published
        last_new = 0.0  # when it was read (monotonic)
        win_start, win_count = time.monotonic(), 0
        next_t = time.monotonic()
        next_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self._take_commands()
            if self.robot is None:
                self._reap_set_aside()
                self._try_connect(now)
                self.state_rate_hz = 0.0
                last_time = None
                self._clock_now = self._clock_prev = None
                self.robot_rtf = None
                self._stop.wait(0.01)
                next_t = time.monotonic()
                continue
            robot = self.robot
            try:
                s = robot.state  # idle: blocks for the next state (~1 ms); in motion: the latest
                t_read = time.monotonic()
                t_robot = s.time.to_sec()
                if t_robot != last_time:
                    if last_time is not None:
                        gap = t_read - last_new
                        if gap > self.state_gap_max_s:
                            self.state_gap_max_s = gap
                        if gap > STATE_STALL_S:
                            self.state_stalls += 1
                    last_time = t_robot
                    last_new = t_read
                    self._clock_now = (t_robot, t_read)
                    q = np.asarray(s.q)
                    dq = np.asarray(s.dq)
                    self._q, self._dq = q, dq
                    half = self._width / 2.0
                    msg.header.stamp = self.node.get_clock().now().to_msg()
                    msg.position = [*q.tolist(), half, half]
                    msg.velocity = [*dq.tolist(), 0.0, 0.0]
                    msg.effort = [*np.asarray(s.tau_J).tolist(), 0.0, 0.0]
                    self.js_pub.publish(msg)
                    self.published += 1
                    win_count += 1
                elif last_time is not None and t_read - last_new > self.state_timeout:
                    self._set_aside.append((robot, self.gripper))
                    robot = None  # no reference left in this thread: see _reap_set_aside
                    self._on_lost(
                        TimeoutError(
                            f"no new robot state for {t_read - last_new:.1f} s (state_timeout_s={self.state_timeout:g})"
                        )
                    )
                    continue
                now = time.monotonic()
                if now - win_start >= 1.0:
                    self.state_rate_hz = win_count / (now - win_start)
                    win_start, win_count = now, 0
                self._control(now, s)
                if now >= next_poll:
                    next_poll = now + 0.005
                    self._supervise()
            except franky.NetworkException as exc:
                self._on_lost(exc)
                continue
            except (franky.ControlException, franky.CommandException, franky.InvalidOperationException) as exc:
                self._on_reflex(exc)
            except Exception as exc:  # anything else from franky: treat as lost, reconnect
                self.log.error(f"franka_bridge: unexpected {type(exc).__name__}: {exc}")
                self._on_lost(exc)
                continue
            if self._status_dirty:
                self._publish_status()
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.05:
                next_t = time.monotonic()

    def _reap_set_aside(self) -> None:
        """Destroy the robot objects set aside by the state timeout once their motion has ended
        (``poll_motion``: non-blocking; it raises the motion's error, e.g. libfranka's timeout).
        Until then they hold their connection; a control thread that never ends keeps its
        object for the life of the process rather than stall this thread in a destructor."""
        keep = []
        for robot, gripper in self._set_aside:
            try:
                running = bool(robot.poll_motion())
            except Exception:
                running = False
            if running:
                keep.append((robot, gripper))
        self._set_aside = keep

    def _supervise(self) -> None:
        """Surface motion errors (reflexes) from franky's control thread."""
        robot = self.robot
        if robot is None:
            return
        # Raises the motion's exception (reflex), if any. Its return value is not used for
        # "moving": right after an asynchronous move() franky can still answer False.
        robot.poll_motion()
        if robot.has_errors:
            raise self.franky.ControlException("robot reports errors: " + str(robot.state.current_errors))

    def _stop_motion(self, reason: str, mode: str) -> None:
        """Jerk-limited stop of the follow motion (``_moving``: follow motions were sent and not
        stopped since)."""
        if self._moving and self.robot is not None:
            self.robot.move(self.franky.JointVelocityStopMotion(), asynchronous=True)
        self._moving = False
        self._v_cmd = np.zeros(7)
        with self._lock:
            self._set(mode=mode, reason=reason)

    def _control(self, now: float, state: Any) -> None:
        """Follow mode: a velocity-level tracking loop on the measured joints.

        Every ``1 / follow_rate_hz`` the commanded joint velocity is
        ``clip(v_ff + position_gain * (target - q), +-scale * FR3 velocity limits)`` (``v_ff``:
        the twin's joint velocity, from the command's velocity field or differenced commands),
        sent as a franky ``JointVelocityMotion`` that preempts the previous one (jerk-limited
        transitions) and lasts ``velocity_hold_s``: if this loop stalls, the robot stops by
        itself. A velocity motion re-plans from the previous *command* rather than from the
        robot's reported desired position/velocity, which is what keeps it smooth on a
        non-realtime host (see HARDWARE.md)."""
        franky = self.franky
        with self._lock:
            armed = self.status.armed
            want_stop = self._want_stop
            self._want_stop = False
            cmd = self._cmd
            mode = self.status.mode
        if want_stop and self._moving:
            self._stop_motion("disarmed: arm stopped; it will not move until /franka_bridge/arm", "idle")
            self._gripper_target = None
        if not armed or cmd is None:
            return
        if self._moving and self._dq is not None:
            ratio = np.abs(self._dq) / (self.scale * FR3_DQ_MAX)
            j = int(np.argmax(ratio))
            if ratio[j] > GUARD_VELOCITY_FACTOR:
                self._reject("guard", f"{ARM_JOINTS[j]} at {self._dq[j]:.2f} rad/s")
                self._stop_motion(
                    f"follow guard: {ARM_JOINTS[j]} moved at {abs(self._dq[j]):.2f} rad/s, over "
                    f"{GUARD_VELOCITY_FACTOR}x its scaled limit; arm stopped and disarmed",
                    "stopped",
                )
                with self._lock:
                    self.status.armed = False
                    self._status_dirty = True
                return
        age = now - cmd.recv
        if age > self.cmd_timeout:
            if mode == "follow":
                self._stop_motion(
                    f"watchdog: no /twin/joint_commands for {age:.3f} s "
                    f"(command_timeout_s={self.cmd_timeout}); arm stopped",
                    "stopped",
                )
            return
        if now - self._last_dispatch < 1.0 / max(1.0, float(self.p["follow_rate_hz"])):
            return
        if self._q is None:
            return
        if cmd.seq != self._checked_seq:  # limits are checked once per command
            self._checked_seq = cmd.seq
            target, note = limit_target(
                cmd.q, self._q, float(self.p["joint_limit_margin_rad"]), float(self.p["max_target_jump_rad"])
            )
            if target is None:
                self._reject("jump", note)
                self._target = None
                if mode == "follow":
                    self._stop_motion(note + "; arm stopped", "stopped")
                else:
                    with self._lock:
                        self._set(reason=note)
                return
            if note:
                self._reject("clipped", note)
            vff = cmd.v
            at_limit = np.abs(target - cmd.q) > 1e-9
            vff = np.where(at_limit, 0.0, vff)
            self._target, self._vff = target, vff
            if cmd.width is not None:
                self._gripper_target = cmd.width
        if self._target is None:
            return
        self._last_dispatch = now
        vmax = self.scale * FR3_DQ_MAX
        # feed-forward only while the command is fresh (it is extrapolated for at most ~2 periods)
        vff = self._vff if age < 0.05 else np.zeros(7)
        v = np.clip(vff + float(self.p["position_gain"]) * (self._target - self._q), -vmax, vmax)
        self.robot.move(franky.JointVelocityMotion(v, duration=self._hold), asynchronous=True)
        self._moving = True
        self._v_cmd = v
        if mode != "follow":
            with self._lock:
                self._set(mode="follow", reason="following /twin/joint_commands")

    def _on_reflex(self, exc: BaseException) -> None:
        why = f"{type(exc).__name__}: {exc}"
        self._moving = False
        self._target = None
        with self._lock:
            self.reflexes.append(why)
            del self.reflexes[:-20]
            self._set(error=True, mode="recovering", reason=f"reflex: {why}")
        if not self.p["auto_recover"]:
            with self._lock:
                self._set(armed=False, mode="stopped", reason=f"reflex (auto_recover off, disarmed): {why}")
            return
        ok = False
        try:
            ok = bool(self.robot.recover_from_errors()) if self.robot is not None else False
        except self.franky.NetworkException as e2:
            self._on_lost(e2)
            return
        except Exception as e2:
            why += f"; recovery failed: {e2}"
        with self._lock:
            if ok:
                self.recoveries += 1
                self._set(
                    error=False,
                    mode="idle" if self.status.armed else "idle",
                    reason=f"recovered automatically from reflex ({why})",
                )
            else:
                self._set(armed=False, mode="stopped", reason=f"reflex, recovery failed, disarmed: {why}")

    # ---- gripper ---------------------------------------------------------------------------
    def _gripper_loop(self) -> None:
        period = 1.0 / max(1.0, float(self.p["gripper_rate_hz"]))
        pending = None
        commanded: float | None = None
        while not self._stop.wait(period):
            g = self.gripper
            if g is None:
                pending, commanded = None, None
                continue
            try:
                self._width = float(g.width)
                target = self._gripper_target
                with self._lock:
                    armed = self.status.armed
                if not armed or target is None:
                    continue
                if pending is not None and not pending.wait(0):
                    continue  # previous move still running
                pending = None
                if commanded is None or abs(target - commanded) > float(self.p["gripper_deadband_m"]):
                    pending = g.move_async(float(target), float(self.p["gripper_speed"]))
                    commanded = target
            except Exception as exc:
                self.log.warning(f"franka_bridge: gripper: {type(exc).__name__}: {exc}")
                self.gripper = None

    # ---- shutdown --------------------------------------------------------------------------
    def _shutdown_robot(self) -> None:
        robot = self.robot
        if robot is not None and self._moving:
            try:
                robot.move(self.franky.JointVelocityStopMotion(), asynchronous=True)
                robot.join_motion(timeout=2.0)
            except Exception:
                pass
        self.robot = None
        self.gripper = None

    def close(self) -> None:
        self._stop.set()
        self._io.join(timeout=5.0)
        if self._cmd_poll is not None:
            self._cmd_poll.close()
            self._cmd_poll = None
        self._grip.join(timeout=2.0)
        if self._sim is not None:
            self._sim.stop()
            self._sim = None


def create_node(cli_args: list[str] | None = None, name: str = NODE_FRANKA_BRIDGE):
    """The franka_bridge node (rclpy must be initialised). The returned Node has ``.bridge``
    (:class:`FrankaBridge`) and ``close()``."""
    from rclpy.node import Node

    from twin.live.common import declare_parameters

    node = Node(name, cli_args=cli_args)
    params = declare_parameters(node, _params())
    node.bridge = FrankaBridge(node, params)
    node.close = node.bridge.close
    return node


def main(argv: list[str] | None = None) -> int:
    from twin.live.common import run_node

    return run_node(create_node, argv, name=NODE_FRANKA_BRIDGE, executor_threads=1)


if __name__ == "__main__":
    sys.exit(main())
