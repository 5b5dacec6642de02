"""policy_runner: runs a policy checkpoint inside the twin; the real arm follows the twin.

The policy sees observations of its own twin (a TwinEnv of ``task``) and commands the twin's
simulated robot in the checkpoint's control mode. The twin's robot joints are published on
``/twin/joint_commands`` at ``command_rate_hz`` (each control step's physics is split into
chunks, paced in real time), and ``franka_bridge`` makes the real arm follow while armed.
What the policy was fed and what it returned go to ``/twinrank/obs/<key>`` and
``/twinrank/action`` (the real-data schema, so the recorder logs them).

Episodes: ``/policy_runner/start`` resets the twin (seed ``seed`` + episode index), puts the
twin robot at the real robot's latest ``/joint_states`` (``sync_robot_at_start``: arming does
not make the arm jump; without a usable one the episode does not start, and ``autostart``
waits for one) and snaps the tracked objects to their latest ``/objects/<name>/pose``;
during the episode objects are pulled toward fresh observations by ``object_gain`` once per
control step. The episode stops on ``/policy_runner/stop``, on task success (when the task
terminates on success), after ``max_steps`` or the task's step limit, when the twin's
physics blows up, or when the real arm has not followed for ``lag_timeout_s``;
``/policy_runner/status`` (JSON) says which.

The real arm cannot always keep up with the twin (franka_bridge limits its speed, and
refuses targets too far from the measured joints). Two guards keep the twin followable:
the twin robot's actuator targets are slewed so its joints move at most
``max_joint_velocity_scale`` of the FR3 velocity limits (the policy's own target is kept: the
twin just gets there at a speed the arm can match), and while the arm lags the last command by
more than ``max_lag_rad`` the twin pauses (time stops in the twin, the last command is
re-sent) and resumes when the arm has caught up to half that: the twin moves no faster than
the real robot can follow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from twin.live.common import (  # noqa: E402
    PolledSubscription,
    Throttle,
    check_pose,
    declare_parameters,
    floats_msg,
    joint_qos,
    latest_qos,
    now_sec,
    pose_to_array,
    run_node,
    slerp,
    stamp_to_sec,
    status_qos,
)
from twin.live.interfaces import (  # noqa: E402
    FR3_MAX_JOINT_VELOCITY,
    NODE_POLICY_RUNNER,
    POLICY_RUNNER_PARAMS,
    SRV_POLICY_START,
    SRV_POLICY_STOP,
    TOPIC_ACTION,
    TOPIC_JOINT_COMMANDS,
    TOPIC_JOINT_STATES,
    TOPIC_POLICY_STATUS,
    JointStateError,
    object_pose_topic,
    obs_topic,
    pack_joints,
    split_list,
    unpack_joints,
)
from twin.robot import GRIPPER_MAX_WIDTH  # noqa: E402


def _env_for_policy(task: str, policy: Any) -> Any:
    """A TwinEnv whose observation groups cover the policy's keys."""
    from twin.env import TwinEnv
    from twin.tasks.base import make_task

    keys = policy.spec.obs_keys
    base = make_task(task).cfg.observations
    cams = tuple(sorted({k.split("/", 1)[1] for k in keys if k.startswith(("rgb/", "depth/"))}))
    ocfg = dataclasses.replace(
        base,
        state=True,
        proprio=True,
        rgb=any(k.startswith("rgb/") for k in keys),
        depth=any(k.startswith("depth/") for k in keys),
        point_cloud="point_cloud" in keys,
        cameras=cams or base.cameras,
    )
    if ocfg.image_size is None and (ocfg.rgb or ocfg.depth):
        for o in policy.spec.observations:
            if o.key.startswith("rgb/"):
                ocfg = dataclasses.replace(ocfg, image_size=(o.shape[1], o.shape[0]))
            elif o.key.startswith("depth/"):
                ocfg = dataclasses.replace(ocfg, image_size=(o.shape[1], o.shape[0]))
    if "point_cloud" in keys:
        ocfg = dataclasses.replace(ocfg, num_points=int(policy.spec.obs("point_cloud").shape[0]))
    return TwinEnv(task, observations=ocfg, render_mode=None)


NO_ARM_STATE = (
    f"not started: no usable {TOPIC_JOINT_STATES} from the arm yet (franka_bridge not up, or not yet "
    "discovered); the twin would start away from the real arm and franka_bridge would refuse its "
    "commands. Retry when they arrive (status arm_state: true), or set sync_robot_at_start:=false "
    "to run the twin without an arm"
)


class PolicyRunner(Node):
    def __init__(self, cli_args: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(NODE_POLICY_RUNNER, cli_args=cli_args, **kwargs)
        self.p = p = declare_parameters(self, POLICY_RUNNER_PARAMS)
        self._lock = threading.Lock()
        self._throttle = Throttle(2.0)
        self.policy: Any = None
        self.env: Any = None
        self.load_error = ""
        self.running = False
        self.episode = -1
        self.step = 0
        self.chunk = 0
        self.success = False
        self.done_reason = ""
        self.commands_sent = 0
        self._slew: np.ndarray | None = None
        self.paused = False
        self.paused_since = 0.0
        self.paused_ticks = 0
        self.lag = float("nan")
        self._latest_joint_msg: JointState | None = None
        self._objects_obs: dict[str, tuple[np.ndarray, float]] = {}
        self._load()

        rx = MutuallyExclusiveCallbackGroup()
        ctl = MutuallyExclusiveCallbackGroup()
        # the real robot's joints are only needed at a tick (lag) and at the start: take the
        # newest from the queue then, instead of an executor callback per message (up to 1 kHz;
        # busy subscriptions also delay the executor's timers)
        self._poll: PolledSubscription | None = PolledSubscription(
            self, JointState, TOPIC_JOINT_STATES, latest_qos(), "joint_sampler"
        )
        if not self._poll.available:
            self._poll = None
            self.create_subscription(
                JointState, TOPIC_JOINT_STATES, self._on_joint_state, latest_qos(), callback_group=rx
            )
        names = split_list(p["objects"]) or (list(self.env.task.object_names) if self.env is not None else [])
        self.object_names = names
        for n in names:
            self.create_subscription(
                PoseStamped, object_pose_topic(n), lambda m, n=n: self._on_pose(n, m), status_qos(), callback_group=rx
            )
        self.pub_cmd = self.create_publisher(JointState, TOPIC_JOINT_COMMANDS, joint_qos())
        self.pub_action = self.create_publisher(Float32MultiArray, TOPIC_ACTION, joint_qos())
        self.pub_obs: dict[str, Any] = {}
        self.pub_status = self.create_publisher(String, TOPIC_POLICY_STATUS, status_qos())
        self.create_service(Trigger, SRV_POLICY_START, self._srv_start, callback_group=ctl)
        self.create_service(Trigger, SRV_POLICY_STOP, self._srv_stop, callback_group=ctl)

        if self.env is not None:
            cfg = self.env.cfg
            self.control_dt = 1.0 / p["control_rate_hz"] if p["control_rate_hz"] > 0 else float(cfg.control_dt)
            self.env.nsub = max(1, int(round(self.control_dt / self.env.base_scene.physics.timestep)))
            chunks = max(1, min(self.env.nsub, int(round(self.control_dt * max(p["command_rate_hz"], 1e-3)))))
            self.chunk_sizes = [len(a) for a in np.array_split(np.arange(self.env.nsub), chunks)]
            self.max_steps = p["max_steps"] or int(cfg.terminations.max_steps)
            for key, space in self.env.observation_space.spaces.items():
                if len(space.shape) <= 2 and "/" not in key:  # vectors (state, proprio, point_cloud)
                    self.pub_obs[key] = self.create_publisher(Float32MultiArray, obs_topic(key), joint_qos())
            period = self.control_dt / len(self.chunk_sizes) if p["realtime"] else 1e-3
            self.create_timer(period, self._tick, callback_group=ctl)
        self.create_timer(0.5, self._publish_status, callback_group=ctl)
        if self.env is not None:
            self.get_logger().info(
                f"policy_runner up: {p['checkpoint']} ({type(self.policy).__name__}, task {p['task']}), control "
                f"{1.0 / self.control_dt:g} Hz, commands {len(self.chunk_sizes) / self.control_dt:g} Hz"
            )
        if p["autostart"] and self.env is not None:
            self.create_timer(0.2, self._autostart_once, callback_group=ctl)
        self._autostarted = False
        self._autostart_waiting = False

    # ---- setup --------------------------------------------------------------------------------
    def _load(self) -> None:
        p = self.p
        if not p["checkpoint"]:
            self.load_error = "no checkpoint given; set the checkpoint parameter (launch argument checkpoint:=...)"
            self.get_logger().error(self.load_error)
            return
        try:
            from policies import load_checkpoint

            policy = load_checkpoint(p["checkpoint"], device=p["device"])
            env = _env_for_policy(p["task"], policy)
            policy.spec.check_env(env)
        except Exception as exc:  # report through the start service and the log
            self.load_error = f"cannot run checkpoint {p['checkpoint']} in task {p['task']}: {exc}"
            self.get_logger().error(self.load_error)
            return
        self.policy, self.env = policy, env
        self.env.reset(seed=int(p["seed"]))

    def _autostart_once(self) -> None:
        """Start the first episode as soon as it can start (retried while the arm's state is
        missing: said once)."""
        if self._autostarted:
            return
        ok, msg = self.start_episode()
        if ok:
            self._autostarted = True
            self.get_logger().info(msg)
        elif msg == NO_ARM_STATE:
            if not self._autostart_waiting:
                self._autostart_waiting = True
                self.get_logger().warning(f"autostart waits: {msg}")
        else:
            self._autostarted = True
            self.get_logger().error(msg)

    # ---- input --------------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        # parsed only when an episode starts (this topic runs at up to 1 kHz)
        self._latest_joint_msg = msg

    def latest_joints(self) -> tuple[list[float], float | None] | None:
        """The real robot's latest joints (7) and gripper width, or None (none / unusable)."""
        if self._poll is not None:
            got = self._poll.take(limit=50)
            if got:
                self._latest_joint_msg = got[-1][0]
        msg = self._latest_joint_msg
        if msg is None:
            return None
        try:
            return unpack_joints(msg.name, msg.position)
        except JointStateError as exc:
            self.get_logger().warning(f"latest /joint_states is unusable: {exc}")
            return None

    def _on_pose(self, name: str, msg: PoseStamped) -> None:
        arr = pose_to_array(msg.pose)
        why = check_pose(arr)
        if why:
            if self._throttle("pose" + name):
                self.get_logger().warning(f"ignored {object_pose_topic(name)}: {why}")
            return
        arr[3:] /= np.linalg.norm(arr[3:])
        stamp = stamp_to_sec(msg.header.stamp)
        self._objects_obs[name] = (arr, stamp if stamp > 0 else now_sec(self))

    # ---- services -----------------------------------------------------------------------------
    def start_episode(self) -> tuple[bool, str]:
        if self.env is None:
            return False, self.load_error
        env, sim = self.env, self.env.sim
        with self._lock:
            if self.running:
                return False, f"episode {self.episode} is running; call {SRV_POLICY_STOP} first"
            real = self.latest_joints() if self.p["sync_robot_at_start"] else None
            if self.p["sync_robot_at_start"] and real is None:
                return False, NO_ARM_STATE
            self.episode += 1
            seed = int(self.p["seed"]) + self.episode
            env.reset(seed=seed)
            sim.ik.rest = np.array(sim.scene.robot.home_qpos, dtype=float)
            if real is not None:
                self._set_robot(np.asarray(real[0]), real[1])
            for name in self.object_names:
                if name in self._objects_obs and name in sim._free_adr:
                    arr, _ = self._objects_obs[name]
                    sim.set_free_body_pose(name, arr[:3], arr[3:])
            sim.forward()
            self.policy.reset()
            self.step = 0
            self.chunk = 0
            self.paused = False
            self.paused_ticks = 0
            self._slew = None
            self.success = False
            self.done_reason = ""
            self.running = True
        self._publish_status()
        return True, f"episode {self.episode} started (seed {seed})"

    def _set_robot(self, q: np.ndarray, width: float | None) -> None:
        sim = self.env.sim
        h, d = sim.h, sim.data
        q = np.clip(q, h.lower, h.upper)
        d.qpos[h.qpos_adr] = q
        d.qvel[h.dof_adr] = 0.0
        d.ctrl[h.arm_act] = q
        if width is not None:
            d.qpos[h.finger_qpos_adr] = width / 2.0
            sim.gripper_cmd = float(np.clip(width / GRIPPER_MAX_WIDTH, 0.0, 1.0))
            d.ctrl[h.gripper_act] = sim.gripper_cmd
        sim.forward()
        sim.q_target = q.copy()
        sim.target_pos, sim.target_rot = sim.tcp_pose_mat()
        # Cartesian control's IK pulls the null space toward a rest posture: use the real
        # robot's starting posture, not the twin's home (else the arm drifts toward it)
        sim.ik.rest = q.copy()

    def stop_episode(self, reason: str = "stopped by service") -> tuple[bool, str]:
        with self._lock:
            if not self.running:
                return False, "no episode is running"
            self.running = False
            self.done_reason = reason
        self._publish_status()
        return True, f"episode {self.episode} stopped after {self.step} steps"

    def _srv_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.start_episode()
        return response

    def _srv_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.stop_episode()
        return response

    # ---- control ------------------------------------------------------------------------------
    def _correct_objects(self) -> None:
        gain = float(np.clip(self.p["object_gain"], 0.0, 1.0))
        if gain <= 0.0:
            return
        sim = self.env.sim
        now = now_sec(self)
        for name, (arr, stamp) in list(self._objects_obs.items()):
            if name not in sim._free_adr or now - stamp > 1.0:
                continue
            cur = sim.body_pose(name)
            sim.set_free_body_pose(name, cur[:3] + gain * (arr[:3] - cur[:3]), slerp(cur[3:], arr[3:], gain))

    def _lagging(self) -> bool:
        """True while the twin must wait for the real arm (see the module docstring)."""
        limit = self.p["max_lag_rad"]
        if limit <= 0:
            return False
        real = self.latest_joints()
        if real is None:
            return False
        self.lag = float(np.abs(np.asarray(real[0]) - self.env.sim.arm_qpos()).max())
        if self.paused:
            return self.lag > 0.5 * limit
        return self.lag > limit

    def _step_chunk(self, nsub: int) -> bool:
        """Step ``nsub`` physics steps with the arm's actuator target slewed toward the
        policy's target at the velocity limit (see the module docstring)."""
        sim = self.env.sim
        scale = self.p["max_joint_velocity_scale"]
        if scale <= 0:
            return sim.step(nsub)
        goal = sim.q_target.copy()
        if self._slew is None:
            self._slew = sim.arm_qpos()
        step = np.asarray(FR3_MAX_JOINT_VELOCITY) * scale * nsub * self.env.base_scene.physics.timestep
        self._slew = self._slew + np.clip(goal - self._slew, -step, step)
        sim.q_target = self._slew.copy()
        try:
            return sim.step(nsub)
        finally:
            sim.q_target = goal  # the policy's target stays (IK seeds, held actions)

    def _tick(self) -> None:
        if not self.running:
            return
        with self._lock:
            if not self.running:
                return
            finished = self._advance()
            if finished:
                self.running = False
                self.paused = False
                self.done_reason = finished
        if finished:
            self.get_logger().info(
                f"episode {self.episode} done: {finished} after {self.step} steps (success={self.success})"
            )
            self._publish_status()

    def _advance(self) -> str:
        """One command period: wait for the arm, or act (at a control step's first chunk) and
        step one chunk of physics. Returns why the episode finished, or ''."""
        env, sim = self.env, self.env.sim
        now = now_sec(self)
        lagging = self._lagging()
        if lagging != self.paused:
            self.paused, self.paused_since = lagging, now
            if lagging and self._throttle("lag"):
                self.get_logger().warning(
                    f"the real arm lags the twin by {self.lag:.3f} rad > max_lag_rad="
                    f"{self.p['max_lag_rad']}: twin paused until it catches up"
                )
        if lagging:
            self.paused_ticks += 1
            self._publish_command()  # the same target: keeps the bridge's watchdog fed
            return "real_arm_not_following" if now - self.paused_since > self.p["lag_timeout_s"] else ""
        if self.chunk == 0:
            self._correct_objects()
            sim.forward()
            obs = env._obs()
            action = self.policy.act_single(obs, deterministic=True)
            for key, pub in self.pub_obs.items():
                if key in obs:
                    pub.publish(floats_msg(obs[key]))
            self.pub_action.publish(floats_msg(np.asarray(action, dtype=np.float32)))
            report = env._apply_action(action)
            if report.get("action_nonfinite") and self._throttle("nonfinite"):
                self.get_logger().warning("the policy returned non-finite actions; held the last command")
        stable = self._step_chunk(self.chunk_sizes[self.chunk])
        self.chunk += 1
        self._publish_command()
        if not stable:
            return "physics_unstable"
        if self.chunk < len(self.chunk_sizes):
            return ""
        self.chunk = 0
        self.step += 1
        env.steps = self.step
        self.success = bool(env.task.success(sim))
        if self.success and env.cfg.terminations.terminate_on_success:
            return "success"
        return "max_steps" if self.step >= self.max_steps else ""

    def _publish_command(self) -> None:
        sim = self.env.sim
        names, pos = pack_joints(sim.arm_qpos(), sim.gripper_width())
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = names
        msg.position = pos
        msg.velocity = [*sim.arm_qvel().tolist(), 0.0, 0.0]
        self.pub_cmd.publish(msg)
        self.commands_sent += 1

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "episode": self.episode,
            "step": self.step,
            "success": self.success,
            "done": (not self.running) and self.episode >= 0,
            "reason": self.done_reason or self.load_error,
            "paused": self.paused,
            "paused_ticks": self.paused_ticks,
            "lag_rad": None if self.lag != self.lag else round(self.lag, 5),
            "arm_state": self.latest_joints() is not None,
            # subscribers (e.g. the recorder) on the least-subscribed of /twinrank/action and
            # /twinrank/obs/<key>: what is published before they are matched is not logged
            "log_subscribers": min(
                [self.pub_action.get_subscription_count()] + [p.get_subscription_count() for p in self.pub_obs.values()]
            ),
            "checkpoint": self.p["checkpoint"],
            "task": self.p["task"],
        }

    def _publish_status(self) -> None:
        self.pub_status.publish(String(data=json.dumps(self.status())))

    def close(self) -> None:
        if self._poll is not None:
            self._poll.close()
            self._poll = None


def create_node(cli_args: list[str] | None = None, **kwargs: Any) -> PolicyRunner:
    return PolicyRunner(cli_args=cli_args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    def create(cli_args: list[str] | None) -> PolicyRunner:
        from policies.runtime import set_torch_threads

        set_torch_threads("worker")  # one intra-op thread: the node shares a small machine with the others
        return create_node(cli_args)

    return run_node(create, argv, name=NODE_POLICY_RUNNER)


if __name__ == "__main__":
    raise SystemExit(main())
