"""twin_sync: keeps the twin in step with the real cell.

Each tick (``sync_rate_hz``):

1. the twin's physics advances by one tick (``simulate_physics``; the robot's actuators hold
   the last measured joints), which is the twin's prediction of the real scene;
2. the latest accepted ``/joint_states`` is compared with the predicted robot (``joint
   residual``) and the twin robot is set to it (positions, velocities, actuator targets,
   gripper width);
3. every tracked object with a fresh ``/objects/<name>/pose`` observation is compared with
   the twin (``object residual``) and moved toward the observation by ``object_gain``
   (position lerp, orientation slerp);
4. ``/twin/joint_states`` and ``/twin/objects/<name>/pose`` are published.

``/twin/desync`` (JSON, :class:`twin.live.interfaces.Desync`) and ``/twin/lost`` are
published at ``desync_rate_hz``: the twin is lost while there are no joint states, they are
older than ``stale_timeout_s``, or a residual exceeds its threshold (held ``lost_hold_s``).
Objects the ``object_tracker`` reports lost (``/objects/status``: occluded, out of view,
removed) are listed with the tracker's reason in ``Desync.object_lost``; the twin keeps them
where its physics has them.

Bad messages are rejected with a logged reason (throttled) and counted in
``Desync.rejected``; they never touch the twin: missing, duplicate or unknown joint names
(``names``: only ``fr3_joint1..7`` and, optionally, the two finger joints are accepted),
NaN/inf positions (``nan``), stamps older than the last accepted one
(``out_of_order``), stamps older than ``stale_timeout_s`` (``stale``) or in the future by
more than that (``future``), bad object poses (``pose``: non-finite, zero quaternion, frame
other than ``world``).

``/joint_states`` is taken from its queue (keep-last 5) at each tick (``poll_joint_states``,
default) rather than by one executor callback per message: at 1 kHz that saves most of the
node's CPU and keeps the executor's timers on time.

Renders of the twin cameras (``/twin/<cam>/color/image_raw``) come from a separate thread on
a copy of the twin's state, at ``render_rate_hz``, so they never delay the sync tick.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402

from twin.live.common import (  # noqa: E402
    PolledSubscription,
    Throttle,
    check_pose,
    declare_parameters,
    fill_pose,
    image_qos,
    joint_qos,
    latest_qos,
    now_sec,
    pose_to_array,
    rgb_image_msg,
    run_node,
    slerp,
    stamp_to_sec,
    status_qos,
)
from twin.live.interfaces import (  # noqa: E402
    ARM_JOINTS,
    FINGER_JOINTS,
    JOINT_NAMES,
    NODE_TWIN_SYNC,
    TOPIC_DESYNC,
    TOPIC_JOINT_STATES,
    TOPIC_LOST,
    TOPIC_OBJECT_STATUS,
    TOPIC_TWIN_JOINT_STATES,
    TWIN_SYNC_PARAMS,
    Desync,
    ObjectTrackingStatus,
    object_pose_topic,
    split_list,
    twin_color_topic,
    twin_object_pose_topic,
)
from twin.robot import GRIPPER_MAX_WIDTH  # noqa: E402


@dataclass
class JointSample:
    q: np.ndarray
    width: float | None
    dq: np.ndarray | None
    stamp: float  # s (header stamp, or receive time for a zero stamp)
    received: float
    seq: int


@dataclass
class ObjectTrack:
    name: str
    free: bool
    obs: np.ndarray | None = None  # latest accepted observation [x y z qw qx qy qz]
    stamp: float = -math.inf
    received: float = -math.inf
    seq: int = 0
    residual: float = 0.0
    residual_max: float = 0.0
    publisher: Any = field(default=None, repr=False)


def classify_joint_state(msg: JointState) -> tuple[str, str, tuple[np.ndarray, float | None, np.ndarray | None]]:
    """('', '', (q, width, dq)) for a usable JointState, else (reason, detail, ())."""
    names = list(msg.name)
    pos = list(msg.position)
    if len(names) != len(pos):
        return "names", f"{len(names)} names but {len(pos)} positions", ()  # type: ignore[return-value]
    if len(set(names)) != len(names):
        return "names", f"duplicate joint names in {names}", ()  # type: ignore[return-value]
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in ARM_JOINTS if n not in index]
    if missing:
        return "names", f"missing joints {missing} (got {names}; expected {list(ARM_JOINTS)})", ()  # type: ignore[return-value]
    unknown = [n for n in names if n not in JOINT_NAMES]
    if unknown:
        # another robot's (or a mislabelled) message: the twin would take a partly foreign state
        detail = (
            f"unknown joints {unknown} (expected {list(ARM_JOINTS)}, optionally with {list(FINGER_JOINTS)}); "
            f"remap another driver's topic or fix its joint names"
        )
        return "names", detail, ()  # type: ignore[return-value]
    q = np.array([pos[index[n]] for n in ARM_JOINTS], dtype=float)
    fingers = [float(pos[index[n]]) for n in FINGER_JOINTS if n in index]
    if not np.isfinite(q).all() or not all(math.isfinite(f) for f in fingers):
        bad = [n for n in ARM_JOINTS if not math.isfinite(pos[index[n]])]
        bad += [n for n in FINGER_JOINTS if n in index and not math.isfinite(pos[index[n]])]
        return "nan", f"non-finite positions for {bad}", ()  # type: ignore[return-value]
    width = None if not fingers else (sum(fingers) if len(fingers) == 2 else 2.0 * fingers[0])
    dq = None
    vel = list(msg.velocity)
    if len(vel) == len(names):
        v = np.array([vel[index[n]] for n in ARM_JOINTS], dtype=float)
        dq = v if np.isfinite(v).all() else None
    return "", "", (q, width, dq)


class TwinSync(Node):
    def __init__(self, cli_args: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(NODE_TWIN_SYNC, cli_args=cli_args, **kwargs)
        self.p = p = declare_parameters(self, TWIN_SYNC_PARAMS)
        from twin.env import TwinEnv

        self.env = TwinEnv(p["task"], render_mode=None)
        self.env.reset(seed=0)
        self.sim = self.env.sim
        self.model, self.data = self.sim.model, self.sim.data
        self.h = self.sim.h
        self._sim_lock = threading.Lock()
        self._rx_lock = threading.Lock()
        self._log_throttle = Throttle(2.0)
        self.tick_dt = 1.0 / max(p["sync_rate_hz"], 1e-3)
        self.nsub = max(1, int(round(self.tick_dt / self.model.opt.timestep)))

        names = split_list(p["objects"]) or list(self.env.task.object_names)
        free = set(self.sim._free_adr)
        self.objects: dict[str, ObjectTrack] = {}
        for n in names:
            try:
                self.model.body(n)
            except KeyError:
                raise ValueError(
                    f"twin_sync: object {n!r} is not a body of task {p['task']!r}'s scene (free bodies: {sorted(free)})"
                ) from None
            if n not in free:
                self.get_logger().warning(
                    f"object {n!r} has no free joint in the twin: residuals are reported "
                    f"but the twin cannot be corrected"
                )
            self.objects[n] = ObjectTrack(n, n in free)

        self._latest: JointSample | None = None
        self._applied_seq = 0
        self._seq = 0
        self._last_stamp = -math.inf
        self.rejected: dict[str, int] = {}
        self.received = 0
        self.applied = 0
        self.ticks = 0
        self.joint_residual = 0.0
        self.joint_residual_max = 0.0
        self.apply_latency = math.nan
        self.latencies: list[float] = []  # stamp -> applied, per applied sample (bounded)
        self._lost_until = -math.inf
        self.desync = Desync()

        rx = MutuallyExclusiveCallbackGroup()
        tick = MutuallyExclusiveCallbackGroup()
        # keep-last 5: the twin needs the latest state, not a backlog (a deep queue turns a
        # momentary stall into seconds of stale messages)
        self._poll: PolledSubscription | None = None
        if p["poll_joint_states"]:
            # the sync tick takes the queued messages itself (see PolledSubscription)
            self._poll = PolledSubscription(self, JointState, TOPIC_JOINT_STATES, latest_qos(), "joint_sampler")
            if not self._poll.available:
                self.get_logger().warning("this rclpy cannot take messages directly; using callbacks")
                self._poll = None
        if self._poll is None:
            self.create_subscription(
                JointState, TOPIC_JOINT_STATES, self._on_joint_state, latest_qos(), callback_group=rx
            )
        self._tracker_status: ObjectTrackingStatus | None = None
        self._tracker_received = -math.inf
        self.create_subscription(String, TOPIC_OBJECT_STATUS, self._on_tracker_status, status_qos(), callback_group=rx)
        for name, track in self.objects.items():
            self.create_subscription(
                PoseStamped,
                object_pose_topic(name),
                lambda m, n=name: self._on_pose(n, m),
                status_qos(),
                callback_group=rx,
            )
            track.publisher = self.create_publisher(PoseStamped, twin_object_pose_topic(name), status_qos())
        self.pub_joints = self.create_publisher(JointState, TOPIC_TWIN_JOINT_STATES, joint_qos())
        self.pub_desync = self.create_publisher(String, TOPIC_DESYNC, status_qos())
        self.pub_lost = self.create_publisher(Bool, TOPIC_LOST, status_qos())
        self.create_timer(self.tick_dt, self._tick, callback_group=tick)
        self.create_timer(1.0 / max(p["desync_rate_hz"], 1e-3), self._publish_desync, callback_group=tick)

        self._stop = threading.Event()
        self._render_thread: threading.Thread | None = None
        self.render_cameras: list[str] = []
        if p["render_rate_hz"] > 0:
            cams = split_list(p["render_cameras"]) or self.env.camera_names()
            for c in cams:
                self.env.base_scene.camera(c)  # clear error for unknown cameras
            self.render_cameras = cams
            self.pub_renders = {c: self.create_publisher(Image, twin_color_topic(c), image_qos()) for c in cams}
            self._render_thread = threading.Thread(target=self._render_loop, name="twin_sync_render", daemon=True)
            self._render_thread.start()
        self.get_logger().info(
            f"twin_sync up: task {p['task']}, objects {list(self.objects)}, {p['sync_rate_hz']:g} Hz "
            f"({self.nsub} physics steps/tick), renders {self.render_cameras or 'off'}"
        )

    # ---- input --------------------------------------------------------------------------------
    def _reject(self, reason: str, detail: str) -> None:
        with self._rx_lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self._log_throttle(reason):
            self.get_logger().warning(f"rejected message ({reason}): {detail}")

    def _on_joint_state(self, msg: JointState) -> None:
        recv = now_sec(self)
        self.received += 1
        reason, detail, parsed = classify_joint_state(msg)
        if reason:
            self._reject(reason, f"/joint_states: {detail}")
            return
        stamp = stamp_to_sec(msg.header.stamp)
        if stamp <= 0.0:
            stamp = recv
        stale = self.p["stale_timeout_s"]
        if recv - stamp > stale:
            self._reject("stale", f"/joint_states is {recv - stamp:.3f} s old (stale_timeout_s={stale})")
            return
        if stamp < self._last_stamp:
            self._reject(
                "out_of_order",
                f"/joint_states stamp {stamp:.6f} is older than the last accepted {self._last_stamp:.6f}",
            )
            return
        if stamp - recv > stale:
            self._reject("future", f"/joint_states stamp is {stamp - recv:.3f} s in the future (clock offset?)")
            return
        q, width, dq = parsed
        with self._rx_lock:
            self._seq += 1
            self._last_stamp = stamp
            self._latest = JointSample(q, width, dq, stamp, recv, self._seq)

    def _on_tracker_status(self, msg: String) -> None:
        try:
            st = ObjectTrackingStatus.from_json(msg.data)
        except (ValueError, TypeError, AttributeError) as exc:
            self._reject("status", f"{TOPIC_OBJECT_STATUS}: not ObjectTrackingStatus JSON ({exc})")
            return
        with self._rx_lock:
            self._tracker_status, self._tracker_received = st, now_sec(self)

    def _on_pose(self, name: str, msg: PoseStamped) -> None:
        recv = now_sec(self)
        arr = pose_to_array(msg.pose)
        why = check_pose(arr)
        if not why and msg.header.frame_id not in ("", "world"):
            why = f"frame {msg.header.frame_id!r} is not 'world'"
        if why:
            self._reject("pose", f"{object_pose_topic(name)}: {why}")
            return
        stamp = stamp_to_sec(msg.header.stamp)
        if stamp <= 0.0:
            stamp = recv
        track = self.objects[name]
        if recv - stamp > self.p["stale_timeout_s"]:
            self._reject("stale", f"{object_pose_topic(name)} is {recv - stamp:.3f} s old")
            return
        if stamp < track.stamp:
            self._reject("out_of_order", f"{object_pose_topic(name)} stamp older than the last accepted")
            return
        arr[3:] /= np.linalg.norm(arr[3:])
        with self._rx_lock:
            track.obs, track.stamp, track.received = arr, stamp, recv
            track.seq += 1

    # ---- tick ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._poll is not None:
            for msg, _ in self._poll.take(limit=50):
                self._on_joint_state(msg)
        with self._rx_lock:
            sample = self._latest
            objs = [(t, None if t.obs is None else t.obs.copy(), t.stamp) for t in self.objects.values()]
        now = now_sec(self)
        d, m, h = self.data, self.model, self.h
        with self._sim_lock:
            if self.p["simulate_physics"] and self.applied > 0:
                mujoco.mj_step(m, d, nstep=self.nsub)
                if not self.sim.is_stable():
                    self.get_logger().error("twin physics became unstable; resetting the twin's velocities")
                    d.qvel[:] = 0.0
                    d.qacc_warmstart[:] = 0.0
            if sample is not None and sample.seq != self._applied_seq:
                pred = d.qpos[h.qpos_adr].copy()
                res = float(np.abs(pred - sample.q).max()) if self.applied > 0 else 0.0
                d.qpos[h.qpos_adr] = sample.q
                d.qvel[h.dof_adr] = 0.0 if sample.dq is None else sample.dq
                d.ctrl[h.arm_act] = sample.q
                if sample.width is not None:
                    d.qpos[h.finger_qpos_adr] = sample.width / 2.0
                    d.ctrl[h.gripper_act] = float(np.clip(sample.width / GRIPPER_MAX_WIDTH, 0.0, 1.0))
                self._applied_seq = sample.seq
                self.applied += 1
                self.joint_residual = res
                self.joint_residual_max = max(self.joint_residual_max, res)
                lat = now - sample.stamp
                self.apply_latency = lat
                if len(self.latencies) < 200_000:
                    self.latencies.append(lat)
            gain = float(np.clip(self.p["object_gain"], 0.0, 1.0))
            for track, obs, obs_stamp in objs:
                if obs is None:
                    continue
                cur = self.sim.body_pose(track.name)
                track.residual = float(np.linalg.norm(cur[:3] - obs[:3]))
                track.residual_max = max(track.residual_max, track.residual)
                # pull toward the latest observation while it is fresh; unobserved (occluded)
                # objects are left to the twin's physics
                if track.free and gain > 0.0 and now - obs_stamp <= self.p["stale_timeout_s"]:
                    pos = cur[:3] + gain * (obs[:3] - cur[:3])
                    quat = slerp(cur[3:], obs[3:], gain)
                    self.sim.set_free_body_pose(track.name, pos, quat)
            mujoco.mj_forward(m, d)
            qpos = d.qpos[h.qpos_adr].copy()
            qvel = d.qvel[h.dof_adr].copy()
            width = float(d.qpos[h.finger_qpos_adr].sum())
            poses = {t.name: self.sim.body_pose(t.name) for t in self.objects.values()}
        self.ticks += 1
        stamp = self.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = stamp
        js.name = list(JOINT_NAMES)
        js.position = [*qpos.tolist(), width / 2.0, width / 2.0]
        js.velocity = [*qvel.tolist(), 0.0, 0.0]
        self.pub_joints.publish(js)
        for name, pose in poses.items():
            msg = PoseStamped()
            msg.header.stamp = stamp
            msg.header.frame_id = "world"
            fill_pose(msg.pose, pose)
            self.objects[name].publisher.publish(msg)

    # ---- desync -------------------------------------------------------------------------------
    def compute_desync(self) -> Desync:
        now = now_sec(self)
        p = self.p
        with self._rx_lock:
            sample = self._latest
            rejected = dict(self.rejected)
            ages = {n: (now - t.stamp if t.obs is not None else math.inf) for n, t in self.objects.items()}
        reasons = []
        age = math.inf if sample is None else now - sample.stamp
        if sample is None:
            reasons.append("no joint states received")
        elif age > p["stale_timeout_s"]:
            reasons.append(f"joint states stale: {age:.3f} s > {p['stale_timeout_s']} s")
        jres = self.joint_residual_max
        if jres > p["joint_lost_threshold_rad"]:
            reasons.append(f"joint residual {jres:.4f} rad > {p['joint_lost_threshold_rad']} rad")
        ores = {}
        for n, t in self.objects.items():
            if t.obs is None:
                continue
            ores[n] = t.residual_max
            # only a fresh observation can say the twin is wrong (an occluded object may
            # legitimately have moved in the twin since it was last seen)
            if t.residual_max > p["object_lost_threshold_m"] and ages[n] <= p["stale_timeout_s"]:
                reasons.append(f"object {n} residual {t.residual_max:.3f} m > {p['object_lost_threshold_m']} m")
        if reasons:
            self._lost_until = now + p["lost_hold_s"]
        with self._rx_lock:
            tracker, tracker_at = self._tracker_status, self._tracker_received
        object_lost: dict[str, str] = {}
        if tracker is not None:
            fresh = now - tracker_at <= max(p["stale_timeout_s"], 2.0)
            for n in self.objects:
                st = tracker.objects.get(n)
                if not fresh:
                    object_lost[n] = f"no /objects/status for {now - tracker_at:.1f} s (object_tracker down?)"
                elif st is not None and not st.get("tracked", False):
                    object_lost[n] = str(st.get("reason") or "lost")
        lost = bool(reasons) or now < self._lost_until
        if lost and not reasons:
            reasons.append("recovering (lost_hold_s)")
        out = Desync(
            joint_residual_rad=jres,
            object_residual_m=ores,
            message_age_s=age,
            object_age_s=ages,
            apply_latency_s=self.apply_latency,
            lost=lost,
            reasons=reasons,
            rejected=rejected,
            ticks=self.ticks,
            applied=self.applied,
            object_lost=object_lost,
        )
        # windowed maxima restart after each report
        self.joint_residual_max = self.joint_residual
        for t in self.objects.values():
            t.residual_max = t.residual
        return out

    def _publish_desync(self) -> None:
        prev = self.desync.lost
        self.desync = d = self.compute_desync()
        if d.lost != prev:
            if d.lost:
                self.get_logger().warning(f"twin lost the real scene: {'; '.join(d.reasons)}")
            else:
                self.get_logger().info("twin back in sync with the real scene")
        self.pub_desync.publish(String(data=d.to_json()))
        self.pub_lost.publish(Bool(data=d.lost))

    # ---- renders ------------------------------------------------------------------------------
    def _render_loop(self) -> None:
        from twin.render import Renderer

        period = 1.0 / self.p["render_rate_hz"]
        w, h = self.p["render_width"], self.p["render_height"]
        try:
            renderer = Renderer(self.model, w, h)
        except Exception as exc:  # no GL: keep syncing, say why there are no renders
            self.get_logger().error(
                f"twin renders disabled: cannot create a {w}x{h} renderer ({exc}); set MUJOCO_GL=egl or osmesa"
            )
            return
        rdata = mujoco.MjData(self.model)
        nxt = time.monotonic()
        try:
            while not self._stop.is_set():
                with self._sim_lock:
                    rdata.qpos[:] = self.data.qpos
                    rdata.qvel[:] = self.data.qvel
                    rdata.time = self.data.time
                mujoco.mj_forward(self.model, rdata)
                stamp = self.get_clock().now().to_msg()
                for cam in self.render_cameras:
                    frame = renderer.render(rdata, cam, rgb=True, depth=False)
                    self.pub_renders[cam].publish(rgb_image_msg(frame.rgb, stamp, f"{cam}_color_optical_frame"))
                nxt += period
                delay = nxt - time.monotonic()
                if delay < 0:
                    nxt = time.monotonic()
                    delay = 0.0
                self._stop.wait(delay)
        finally:
            renderer.close()

    def close(self) -> None:
        self._stop.set()
        if self._render_thread is not None:
            self._render_thread.join(timeout=5.0)
        if self._poll is not None:
            self._poll.close()


def create_node(cli_args: list[str] | None = None, **kwargs: Any) -> TwinSync:
    return TwinSync(cli_args=cli_args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    return run_node(create_node, argv, name=NODE_TWIN_SYNC)


if __name__ == "__main__":
    raise SystemExit(main())
