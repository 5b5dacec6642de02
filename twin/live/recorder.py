"""recorder: writes real episodes to rosbag2 MCAP in the real-data schema (:mod:`twin.live.realdata`).

Bags are written through :class:`twin.live.realdata.BagWriter`, so they are exactly what
``twin.live.realdata.read_bag`` reads: ``/twinrank/meta``, ``/twinrank/episode`` events,
``/joint_states``, ``/twinrank/obs/<key>``, ``/twinrank/action``, ``/objects/<name>/pose``
and, with ``record_images``, ``/<cam>/color/image_raw``, ``/<cam>/depth/image_rect_raw``,
``/<cam>/color/camera_info`` and ``/<cam>/points``.

Episodes are marked by the operator (or a script) through services:
``/recorder/start_episode`` opens a bag on first use (``<bag_dir>/<bag_prefix>_<time>``) and
starts an episode; ``/recorder/end_episode_success`` / ``/recorder/end_episode_failure``
end it with that outcome; ``/recorder/close_bag`` finalises the bag (the next episode opens
a new one; ``bag_per_episode`` does this after every episode). Only messages inside an
episode are written. Shutting the node down closes the bag (an open episode is ended with an
unknown outcome).

Checkpoint tags: with ``plan_file`` (a real-trial plan from ``twinrank plan-real``, read by
:func:`twin.live.plan.read_plan`) each ``/recorder/start_episode`` tags the episode's start
event with the next planned trial (:data:`twin.live.plan.EPISODE_KEYS`: ``checkpoint``,
``checkpoint_id``, ``plan_trial``; read back as ``RealEpisode.meta``) and its reply names the
checkpoint that must run (``trial 3/12: run bc/step_0000030 (id ...)``). An episode ended
success or failure advances the plan; one ended with an unknown outcome (``close_bag`` or
shutdown during an episode) does not, so that trial is run again. Once every trial is done
``start_episode`` is refused (run ``twinrank plan-real`` again, restart with the new plan).
``plan_start`` resumes a plan after a restart (the replies and the status's
``plan.next_index`` give it). A bad plan file, a plan for another task or a ``plan_start``
outside the plan stop the node at start-up (one line naming the problem, exit code 2).
Without a plan, ``checkpoint`` tags every episode with that label.

Message times are the recorder's receive times (node clock, made non-decreasing), as
``ros2 bag record`` logs them; ``/joint_states`` (up to 1 kHz) is taken in batches with each
message's DDS receive time (``poll_joint_states``). Observation topics (``/twinrank/obs/*``) and object poses
(``/objects/*/pose``) beyond the configured ones are discovered every
``discover_period_s``; the twin's own topics (``/twin/...``) are never recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger

from twin.live.common import (
    PolledSubscription,
    Throttle,
    declare_parameters,
    floats_array,
    image_qos,
    joint_qos,
    now_sec,
    pose_to_array,
    run_node,
    status_qos,
)
from twin.live.interfaces import (
    NODE_RECORDER,
    RECORDER_PARAMS,
    SRV_CLOSE_BAG,
    SRV_END_FAILURE,
    SRV_END_SUCCESS,
    SRV_START_EPISODE,
    T_FLOATS,
    T_POSE,
    TOPIC_ACTION,
    TOPIC_JOINT_STATES,
    TOPIC_RECORDER_STATUS,
    camera_info_topic,
    color_topic,
    depth_topic,
    object_pose_topic,
    obs_topic,
    points_topic,
    split_list,
)
from twin.live.plan import PlanError, PlannedTrial, RealTrialPlan, read_plan

_RE_OBS = re.compile(r"^/twinrank/obs/([A-Za-z0-9_]+)$")
_RE_OBJ = re.compile(r"^/objects/([A-Za-z][A-Za-z0-9_]*)/pose$")
_RE_COLOR = re.compile(r"^/([A-Za-z][A-Za-z0-9_]*)/color/image_raw$")


# ---- message decoding --------------------------------------------------------------------------
def image_to_rgb(msg: Image) -> np.ndarray:
    """rgb8 / bgr8 / rgba8 / bgra8 / mono8 Image -> (H, W, 3) uint8."""
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(msg.encoding)
    if ch is None:
        raise ValueError(f"colour encoding {msg.encoding!r} is not supported (rgb8, bgr8, rgba8, bgra8, mono8)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if len(buf) < h * step or step < w * ch:
        raise ValueError(f"image data too short for {h}x{w} {msg.encoding}")
    img = buf[: h * step].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if ch == 1:
        return np.repeat(img, 3, axis=2)
    if msg.encoding.startswith("bgr"):
        return np.ascontiguousarray(img[:, :, 2::-1])
    return np.ascontiguousarray(img[:, :, :3])


def depth_to_array(msg: Image) -> np.ndarray:
    """16UC1 (mm, returned as uint16) or 32FC1 (m, float32) depth Image -> (H, W)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    order = ">" if msg.is_bigendian else "<"
    if msg.encoding in ("16UC1", "mono16"):
        dt, size = np.dtype(order + "u2"), 2
    elif msg.encoding == "32FC1":
        dt, size = np.dtype(order + "f4"), 4
    else:
        raise ValueError(f"depth encoding {msg.encoding!r} is not supported (16UC1, 32FC1)")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if len(buf) < h * step or step < w * size:
        raise ValueError(f"depth data too short for {h}x{w} {msg.encoding}")
    rows = np.ascontiguousarray(buf[: h * step].reshape(h, step)[:, : w * size])
    arr = rows.view(dt).reshape(h, w)
    return arr.astype(np.uint16) if size == 2 else arr.astype(np.float32)


_PF = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def points_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 with x, y, z (+ packed rgb) -> (N, 6) float32 x, y, z, r, g, b in [0, 1]."""
    order = ">" if msg.is_bigendian else "<"
    fields = {f.name: f for f in msg.fields}
    for k in ("x", "y", "z"):
        if k not in fields:
            raise ValueError(f"point cloud has no field {k!r}")
    names, formats, offsets = [], [], []
    for k in ("x", "y", "z"):
        names.append(k)
        formats.append(order + _PF[int(fields[k].datatype)])
        offsets.append(int(fields[k].offset))
    rgbf = fields.get("rgb") or fields.get("rgba")
    if rgbf is not None and int(rgbf.datatype) in (6, 7):
        names.append("rgb")
        formats.append(order + "u4")
        offsets.append(int(rgbf.offset))
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    h, w, row = int(msg.height), int(msg.width), int(msg.row_step)
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if len(buf) < h * row:
        raise ValueError("point cloud data shorter than height * row_step")
    rows = np.ascontiguousarray(buf[: h * row].reshape(h, row)[:, : w * int(msg.point_step)])
    rec = rows.reshape(-1).view(dt)
    out = np.zeros((len(rec), 6), np.float32)
    out[:, 0], out[:, 1], out[:, 2] = rec["x"], rec["y"], rec["z"]
    if "rgb" in names:
        packed = rec["rgb"].astype(np.uint32)
        out[:, 3:] = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], 1).astype(np.float32) / 255.0
    return out


class Recorder(Node):
    def __init__(self, cli_args: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(NODE_RECORDER, cli_args=cli_args, **kwargs)
        self.p = declare_parameters(self, RECORDER_PARAMS)
        self.plan: RealTrialPlan | None = None
        self.plan_next = 0  # index in plan.trials of the next trial to run
        self._episode_trial: int | None = None  # plan index of the open episode's trial
        self._episode_tags: dict[str, Any] = {}
        try:
            self._load_plan()
        except ValueError as exc:
            self.get_logger().error(str(exc))
            self.destroy_node()
            raise
        self._lock = threading.RLock()
        self._throttle = Throttle(2.0)
        self.writer: Any = None
        self.bag_path: Path | None = None
        self.bags: list[Path] = []
        self.episode: int | None = None
        self.episodes_done = 0
        self.messages = 0
        self.dropped: dict[str, int] = {}
        self._last_t = 0.0
        self._episode_t0 = 0.0
        self._subscribed: set[str] = set()
        self._rx = MutuallyExclusiveCallbackGroup()
        ctl = MutuallyExclusiveCallbackGroup()

        self._poll: PolledSubscription | None = None
        if self.p["poll_joint_states"]:
            self._poll = PolledSubscription(self, JointState, TOPIC_JOINT_STATES, joint_qos(), "joint_sampler")
            if self._poll.available:
                self._subscribed.add(TOPIC_JOINT_STATES)
                self.create_timer(0.02, self._drain_timer, callback_group=self._rx)
            else:
                self._poll = None
        if self._poll is None:
            self._subscribe(TOPIC_JOINT_STATES, JointState, self._on_joints, joint_qos())
        self._subscribe(TOPIC_ACTION, Float32MultiArray, self._on_action, joint_qos())
        for key in split_list(self.p["obs_keys"]):
            self._subscribe_obs(key)
        for name in split_list(self.p["objects"]):
            self._subscribe_object(name)
        for cam in split_list(self.p["cameras"]):
            self._subscribe_camera(cam)
        self.pub_status = self.create_publisher(String, TOPIC_RECORDER_STATUS, status_qos())
        self.create_service(Trigger, SRV_START_EPISODE, self._srv_start, callback_group=ctl)
        self.create_service(Trigger, SRV_END_SUCCESS, lambda rq, rs: self._srv_end(rs, True), callback_group=ctl)
        self.create_service(Trigger, SRV_END_FAILURE, lambda rq, rs: self._srv_end(rs, False), callback_group=ctl)
        self.create_service(Trigger, SRV_CLOSE_BAG, self._srv_close, callback_group=ctl)
        if self.p["discover_period_s"] > 0:
            self.create_timer(self.p["discover_period_s"], self._discover, callback_group=ctl)
        self.create_timer(1.0, self._publish_status, callback_group=ctl)
        self.get_logger().info(
            f"recorder up: bags in {self.p['bag_dir']}, task {self.p['task']}, domain {self.p['domain']}"
        )
        if self.plan is not None:
            self.get_logger().info(f"following plan {self.plan.path}: {self._plan_next_text()}")
        elif self.p["checkpoint"]:
            self.get_logger().info(f"tagging every episode with checkpoint {self.p['checkpoint']}")

    # ---- real-trial plan ----------------------------------------------------------------------
    def _load_plan(self) -> None:
        """Read ``plan_file`` (PlanError, a ValueError, for a bad file), check it against the
        task and ``plan_start`` (ValueError)."""
        file, start = self.p["plan_file"], self.p["plan_start"]
        if not file:
            if start:
                self.get_logger().warning(f"plan_start={start} is ignored: no plan_file is set")
            return
        if self.p["checkpoint"]:
            self.get_logger().warning(
                f"plan_file and checkpoint are both set: episodes are tagged from the plan {file}, "
                f"checkpoint={self.p['checkpoint']!r} is ignored"
            )
        plan = read_plan(Path(file).expanduser())
        plan.path = str(Path(plan.path).resolve())
        task = plan.meta.get("task")
        if task not in (None, "") and str(task) != self.p["task"]:
            raise PlanError(
                f"plan file {plan.path} is for task {task!r} but the recorder records task {self.p['task']!r}; "
                f"set task:={task} or pass a plan for {self.p['task']!r}"
            )
        if not 0 <= start <= len(plan):
            raise ValueError(
                f"plan_start={start} is outside plan {plan.path} ({len(plan)} trials); "
                f"use 0..{len(plan) - 1} (the index of the next trial to run)"
            )
        self.plan, self.plan_next = plan, start
        if start == len(plan):
            self.get_logger().warning(f"plan_start={start}: the plan {plan.path} is already complete")

    def _trial_text(self, index: int) -> str:
        assert self.plan is not None
        t: PlannedTrial = self.plan.trials[index]
        number = "" if t.trial == index + 1 else f" (plan trial {t.trial})"
        return f"trial {index + 1}/{len(self.plan)}{number}: run {t.describe()}"

    def _plan_done_text(self) -> str:
        assert self.plan is not None
        return (
            f"plan complete: all {len(self.plan)} trials of {self.plan.path} are done; "
            f"run `twinrank plan-real` again and restart the recorder with plan_file:=<the new plan>"
        )

    def _plan_next_text(self) -> str:
        assert self.plan is not None
        if self.plan_next >= len(self.plan):
            return self._plan_done_text()
        return f"next {self._trial_text(self.plan_next)} (resume with plan_start:={self.plan_next})"

    def plan_status(self) -> dict[str, Any] | None:
        """The ``plan`` entry of the status JSON (None without a plan)."""
        with self._lock:
            if self.plan is None:
                return None
            n = len(self.plan)
            nxt = self.plan.trials[self.plan_next] if self.plan_next < n else None
            return {
                "file": self.plan.path,
                "total": n,
                "next_index": self.plan_next,
                "next_trial": None if nxt is None else nxt.trial,
                "next_checkpoint": None if nxt is None else nxt.checkpoint,
                "next_checkpoint_id": None if nxt is None else nxt.checkpoint_id,
                "remaining": n - self.plan_next,
                "complete": nxt is None,
            }

    # ---- subscriptions ------------------------------------------------------------------------
    def _subscribe(self, topic: str, kind: Any, cb: Any, qos: Any) -> None:
        if topic in self._subscribed:
            return
        self._subscribed.add(topic)
        self.create_subscription(kind, topic, cb, qos, callback_group=self._rx)

    def _subscribe_obs(self, key: str) -> None:
        self._subscribe(obs_topic(key), Float32MultiArray, lambda m, k=key: self._on_obs(k, m), joint_qos())

    def _subscribe_object(self, name: str) -> None:
        self._subscribe(object_pose_topic(name), PoseStamped, lambda m, n=name: self._on_pose(n, m), status_qos())

    def _subscribe_camera(self, cam: str) -> None:
        self._subscribe(camera_info_topic(cam), CameraInfo, lambda m, c=cam: self._on_info(c, m), status_qos())
        if self.p["record_images"]:
            self._subscribe(color_topic(cam), Image, lambda m, c=cam: self._on_color(c, m), image_qos())
            self._subscribe(depth_topic(cam), Image, lambda m, c=cam: self._on_depth(c, m), image_qos())
            self._subscribe(points_topic(cam), PointCloud2, lambda m, c=cam: self._on_points(c, m), image_qos())

    def _discover(self) -> None:
        for topic, types in self.get_topic_names_and_types():
            if topic in self._subscribed:
                continue
            if (m := _RE_OBS.match(topic)) and T_FLOATS in types:
                self._subscribe_obs(m.group(1))
            elif (m := _RE_OBJ.match(topic)) and T_POSE in types:
                self._subscribe_object(m.group(1))
            elif self.p["record_images"] and (m := _RE_COLOR.match(topic)) and m.group(1) != "twin":
                self._subscribe_camera(m.group(1))

    # ---- writing ------------------------------------------------------------------------------
    def _t(self, t: float | None = None) -> float:
        t = max(now_sec(self) if t is None else t, self._last_t)
        self._last_t = t
        return t

    def _write(self, what: str, fn: Any, t: float | None = None) -> None:
        with self._lock:
            if self.writer is None or self.episode is None:
                return
            if t is None:
                self._drain_locked()  # polled joint states received before this message go first
            try:
                fn(self._t(t))
                self.messages += 1
            except Exception as exc:  # a bad message must not stop the recording
                self.dropped[what] = self.dropped.get(what, 0) + 1
                if self._throttle(what):
                    self.get_logger().warning(f"dropped a {what} message: {exc}")

    def _drain_locked(self, keep: bool = True) -> None:
        """Write (or with ``keep=False`` discard) the polled joint states, at their receive times."""
        if self._poll is None:
            return
        for m, t in self._poll.take():
            if keep and self.episode is not None and t >= self._episode_t0:
                self._write_joints(m, t)

    def _drain_timer(self) -> None:
        with self._lock:
            self._drain_locked(keep=self.writer is not None and self.episode is not None)

    def _write_joints(self, m: JointState, t: float | None = None) -> None:
        self._write(
            "joint_states",
            lambda tt: self.writer.write_joint_state(
                tt, list(m.name), list(m.position), list(m.velocity) or None, list(m.effort) or None
            ),
            t,
        )

    def _on_joints(self, m: JointState) -> None:
        self._write_joints(m)

    def _on_obs(self, key: str, m: Float32MultiArray) -> None:
        self._write(f"obs/{key}", lambda t: self.writer.write_obs(t, key, floats_array(m)))

    def _on_action(self, m: Float32MultiArray) -> None:
        self._write("action", lambda t: self.writer.write_action(t, floats_array(m)))

    def _on_pose(self, name: str, m: PoseStamped) -> None:
        a = pose_to_array(m.pose)
        self._write(
            f"objects/{name}",
            lambda t: self.writer.write_object_pose(t, name, a[:3], a[3:], frame_id=m.header.frame_id or "world"),
        )

    def _on_info(self, cam: str, m: CameraInfo) -> None:
        self._write(
            f"{cam}/camera_info",
            lambda t: self.writer.write_camera_info(
                t,
                cam,
                list(m.k),
                int(m.width),
                int(m.height),
                list(m.d) or None,
                m.distortion_model or "plumb_bob",
                m.header.frame_id or None,
            ),
        )

    def _on_color(self, cam: str, m: Image) -> None:
        self._write(
            f"{cam}/color", lambda t: self.writer.write_image(t, cam, image_to_rgb(m), m.header.frame_id or None)
        )

    def _on_depth(self, cam: str, m: Image) -> None:
        self._write(
            f"{cam}/depth",
            lambda t: self.writer.write_depth(t, cam, depth_to_array(m), frame_id=m.header.frame_id or None),
        )

    def _on_points(self, cam: str, m: PointCloud2) -> None:
        self._write(
            f"{cam}/points",
            lambda t: self.writer.write_points(t, cam, points_to_array(m), frame_id=m.header.frame_id or None),
        )

    # ---- episodes -----------------------------------------------------------------------------
    def _open(self) -> None:
        from twin.live.realdata import BagWriter

        root = Path(self.p["bag_dir"]).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{self.p['bag_prefix']}_{time.strftime('%Y%m%d-%H%M%S')}"
        path, k = root / stem, 1
        while path.exists():
            k += 1
            path = root / f"{stem}-{k}"
        meta: dict[str, Any] = {"recorder": "twin.live.recorder"}
        if self.plan is not None:  # provenance: the plan file may be replaced by the next plan
            meta.update(plan_file=self.plan.path, plan=dict(self.plan.meta))
        self.writer = BagWriter(
            path,
            task=self.p["task"],
            domain=self.p["domain"],
            robot=self.p["robot"],
            compress=self.p["compress"],
            meta=meta,
        ).open()
        self.bag_path = path
        self.bags.append(path)
        self.get_logger().info(f"recording to {path}")

    def start_episode(self) -> tuple[bool, str]:
        with self._lock:
            if self.episode is not None:
                return False, f"episode {self.episode} is open; end it with {SRV_END_SUCCESS} or {SRV_END_FAILURE}"
            trial: int | None = None
            tags: dict[str, Any] = {}
            head = ""
            if self.plan is not None:
                if self.plan_next >= len(self.plan):
                    msg = self._plan_done_text()
                    self.get_logger().warning(f"start_episode refused: {msg}")
                    return False, msg
                trial = self.plan_next
                tags = self.plan.trials[trial].episode_tags()
                head = self._trial_text(trial) + "; "
            elif self.p["checkpoint"]:
                tags = {"checkpoint": self.p["checkpoint"]}
                head = f"run {self.p['checkpoint']}; "
            try:
                if self.writer is None:
                    self._open()
                self._drain_locked(keep=False)  # joint states from before the episode
                self._episode_t0 = self._t()
                self.episode = self.writer.start_episode(t=self._episode_t0, task=self.p["task"], **tags)
            except Exception as exc:
                return False, f"cannot start an episode: {exc}"
            self._episode_trial, self._episode_tags = trial, tags
            msg = f"{head}episode {self.episode} started in {self.bag_path}"
        self.get_logger().info(msg)
        self._publish_status()
        return True, msg

    def end_episode(self, success: bool | None, reason: str = "") -> tuple[bool, str]:
        with self._lock:
            if self.episode is None:
                return False, f"no episode is open; start one with {SRV_START_EPISODE}"
            k = self.episode
            self._drain_locked()  # joint states received up to now belong to the episode
            self.writer.end_episode(success, failure_reason=reason, t=self._t())
            self.episode = None
            self.episodes_done += 1
            bag = self.bag_path
            plan_text = ""
            if self.plan is not None and self._episode_trial is not None:
                if success is not None:  # an unknown outcome runs the trial again
                    self.plan_next = self._episode_trial + 1
                plan_text = "; " + self._plan_next_text()
            self._episode_trial, self._episode_tags = None, {}
            if self.p["bag_per_episode"]:
                self._close()
        msg = f"episode {k} ended (success={success}) in {bag}{plan_text}"
        self.get_logger().info(msg)
        self._publish_status()
        return True, msg

    def _close(self) -> None:
        with self._lock:
            if self.writer is None:
                return
            if self.episode is not None:
                self._drain_locked()
                self.writer.end_episode(None, failure_reason="recorder_closed", t=self._t())
                if self.plan is not None and self._episode_trial is not None:  # unknown outcome
                    self.get_logger().warning(
                        f"episode {self.episode} ended without an outcome (bag closed): the plan does not "
                        f"advance, next {self._trial_text(self._episode_trial)} again"
                    )
                self.episode = None
                self._episode_trial, self._episode_tags = None, {}
            self.writer.close()
            self.get_logger().info(f"closed bag {self.bag_path}")
            self.writer = None

    def _srv_start(self, rq: Trigger.Request, rs: Trigger.Response) -> Trigger.Response:
        rs.success, rs.message = self.start_episode()
        return rs

    def _srv_end(self, rs: Trigger.Response, success: bool) -> Trigger.Response:
        rs.success, rs.message = self.end_episode(success, "" if success else "operator_marked_failure")
        return rs

    def _srv_close(self, rq: Trigger.Request, rs: Trigger.Response) -> Trigger.Response:
        with self._lock:
            bag = self.bag_path if self.writer is not None else None
            self._close()
        rs.success = bag is not None
        rs.message = f"closed {bag}" if bag is not None else "no bag is open"
        self._publish_status()
        return rs

    def status(self) -> dict[str, Any]:
        return {
            "recording": self.episode is not None,
            "episode": self.episode,
            "bag": str(self.bag_path) if self.writer is not None else None,
            "bags": [str(b) for b in self.bags],
            "episodes": self.episodes_done,
            "messages": self.messages,
            "dropped": dict(self.dropped),
            "topics": sorted(self._subscribed),
            "episode_checkpoint": self._episode_tags.get("checkpoint"),
            "plan": self.plan_status(),
        }

    def _publish_status(self) -> None:
        self.pub_status.publish(String(data=json.dumps(self.status())))

    def close(self) -> None:
        self._close()
        if self._poll is not None:
            self._poll.close()
            self._poll = None


def create_node(cli_args: list[str] | None = None, **kwargs: Any) -> Recorder:
    return Recorder(cli_args=cli_args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    return run_node(create_node, argv, name=NODE_RECORDER)


if __name__ == "__main__":
    raise SystemExit(main())
