"""Gymnasium environment over a twin task, with perturbation conditions.

``TwinEnv(task)`` builds the task's scene, applies a perturbation condition at reset,
and steps the robot in one of the control modes of :class:`~twin.tasks.base.ActionCfg`.
Bad actions (NaN/inf, out of bounds) are clipped and reported in ``info``; a physics
blow-up ends the episode as failed with ``info["failure_reason"] == "physics_unstable"``.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from twin.compile import CompiledScene, compile_scene
from twin.perturbations import Condition, PerturbationSuite, nominal_condition
from twin.robot import euler_to_mat, mat_to_quat, quat_to_mat
from twin.scene import SceneCfg
from twin.sim import TwinSim
from twin.tasks.base import ObservationCfg, Task, TaskCfg, TaskError, make_task

PROPRIO_DIM = 7 + 1 + 3 + 4
ROBOT_STATE_DIM = 7 + 1 + 3 + 4  # same content as proprio, noise-free
_SIM_CACHE_SIZE = 6
ENGINES = ("mujoco", "pybullet")
#: Compiled models of this process by scene digest, shared by every env whose task leaves the
#: model alone (``Task.writes_model`` False): envs of one scene step their own MjData on one
#: MjModel, as MuJoCo intends. Eight envs of a worker then hold one copy of the meshes and
#: collision data instead of eight (memory, and the CPU caches the physics runs from).
_SHARED_MODELS: weakref.WeakValueDictionary[str, CompiledScene] = weakref.WeakValueDictionary()


def _discrete_table(pos_step: float, rot_step: float) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
    """The 14 discrete actions: (TCP translation, rotation matrix, gripper command or None)."""
    out: list[tuple[np.ndarray, np.ndarray, float | None]] = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            d = np.zeros(3)
            d[axis] = sign * pos_step
            out.append((d, np.zeros(3), None))
    for axis in range(3):
        for sign in (1.0, -1.0):
            r = np.zeros(3)
            r[axis] = sign * rot_step
            out.append((np.zeros(3), r, None))
    out.append((np.zeros(3), np.zeros(3), 1.0))
    out.append((np.zeros(3), np.zeros(3), 0.0))
    # the rotation deltas as matrices once, not per step
    return [(dpos, euler_to_mat(*drot), grip) for dpos, drot, grip in out]


#: units of the robot part of the observations (TwinSim.robot_state)
ROBOT_STATE_UNITS = (
    "joints rad (7), gripper width m (1), TCP position m (3), TCP quaternion wxyz in the hemisphere of the "
    "TCP pointing down (4)"
)
#: bumped when an observation's content changes for the same state (cached demonstrations made
#: before are collected again): 2 = the TCP quaternion in one hemisphere (robot.canonical_tcp_quat)
OBSERVATION_VERSION = 2


class TwinEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str | Task,
        cfg: TaskCfg | None = None,
        *,
        control_mode: str | None = None,
        observations: ObservationCfg | None = None,
        suite: PerturbationSuite | str | None = None,
        max_steps: int | None = None,
        render_mode: str | None = "rgb_array",
        render_size: tuple[int, int] = (320, 240),
        engine: str = "mujoco",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
        #: physics engine: "mujoco" (the twin) or "pybullet" (twin.bullet: the second engine that
        #: plays the real cell; same tasks, observations and control modes)
        self.engine = engine
        self.task: Task = make_task(task, cfg) if isinstance(task, str) else task
        if engine not in self.task.engines:
            raise ValueError(
                f"task {self.task.name!r} does not run on engine {engine!r} yet (engines: {', '.join(self.task.engines)})"
            )
        tcfg = self.task.cfg
        if control_mode is not None:
            tcfg = tcfg.replace(actions=_replace(tcfg.actions, mode=control_mode))
        if observations is not None:
            tcfg = tcfg.replace(observations=observations)
        self._task_max_steps = tcfg.terminations.max_steps
        if max_steps is not None:
            tcfg = tcfg.replace(terminations=_replace(tcfg.terminations, max_steps=max_steps))
        self.task.cfg = tcfg
        self.cfg = tcfg
        self.base_scene: SceneCfg = tcfg.scene
        self.base_scene.validate()
        if isinstance(suite, str):
            from twin.perturbations import load_suite

            suite = load_suite(suite, task=self.task.name)
        self.suite: PerturbationSuite | None = suite
        self.render_mode = render_mode
        self.render_size = render_size
        self._sims: OrderedDict[str, TwinSim] = OrderedDict()
        self._renderers: dict[tuple[str, int, int], Any] = {}
        self._scene_key = ""
        self._splats: tuple[str, Any] | None = None  # (scene key, SplatBinding) for splat cameras
        self._user_splats: Any = None  # SplatBinding of splats given to use_splats (a scan), else None
        self._splat_background: tuple[float, float, float] = (0.0, 0.0, 0.0)
        # condition's scene values -> (perturbed scene, its digest): a reset under values seen
        # before neither copies nor hashes the scene again
        self._variants: OrderedDict[str, tuple[SceneCfg, str]] = OrderedDict()
        self.sim: TwinSim = self._sim_for(self.base_scene)
        self._variants[""] = (self.base_scene, self._scene_key)
        self.scene: SceneCfg = self.base_scene
        self.condition: Condition = nominal_condition()
        self.nsub = max(1, int(round(tcfg.control_dt / self.base_scene.physics.timestep)))
        self._discrete = _discrete_table(tcfg.actions.pos_step, tcfg.actions.rot_step)
        self._rng = np.random.default_rng(0)
        self._noise_rng = np.random.default_rng(0)
        self.steps = 0
        #: wall time spent in physics stepping (``TwinSim.step``) by this env so far
        self.physics_s = 0.0
        self._failed_reason = ""
        self.action_space = self._make_action_space()
        self.observation_space = self._make_observation_space()
        self._check_splat_cameras(self.cfg.observations.splat_cameras)

    def _check_splat_cameras(self, cameras: Any) -> None:
        extra = [c for c in cameras if c not in self.camera_names()]
        if extra:
            raise ValueError(
                f"ObservationCfg.splat_cameras {extra} are not observed cameras {self.camera_names()}: "
                "list only cameras in ObservationCfg.cameras (or the scene's when that is empty)"
            )

    def use_splats(
        self,
        cameras: Any,
        splats: Any = None,
        *,
        backend: str | None = None,
        background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        """Render ``cameras`` from Gaussian splats from now on (the one splat camera mechanism:
        ``ObservationCfg.splat_cameras`` sets the same at construction). ``splats``: your own
        (a :class:`twin.splats.GaussianSplats` scan in world frame, or a
        :class:`twin.splats.SplatBinding`), bound to the bodies at the current state; None =
        splats sampled from the scene's meshes. ``backend`` / ``background``: the rasterizer
        ("auto", "cpu", "gsplat"; default the config's) and the colour behind the splats."""
        import dataclasses

        cameras = tuple(cameras)
        self._check_splat_cameras(cameras)
        obs_cfg = dataclasses.replace(
            self.cfg.observations, splat_cameras=cameras, splat_backend=backend or self.cfg.observations.splat_backend
        )
        self.cfg = dataclasses.replace(self.cfg, observations=obs_cfg)
        self._splat_background = tuple(float(c) for c in background)  # type: ignore[assignment]
        self._user_splats = None
        if splats is not None:
            from twin.splats.binding import SplatBinding

            self.sim.forward()
            self._user_splats = (
                splats if isinstance(splats, SplatBinding) else SplatBinding(splats, self.sim.model, self.sim.data)
            )

    def set_max_steps(self, max_steps: int | None) -> None:
        """Episode step limit from the next step on (``None``: the task's own), so a kept-alive
        env serves evaluations of any length without being rebuilt."""
        n = self._task_max_steps if max_steps is None else int(max_steps)
        if n < 1:
            raise ValueError(f"max_steps = {n}: an episode needs at least one step")
        if n != self.cfg.terminations.max_steps:
            self.cfg = self.cfg.replace(terminations=_replace(self.cfg.terminations, max_steps=n))
            self.task.cfg = self.cfg

    # ---- spaces ------------------------------------------------------------------------------
    def _make_action_space(self) -> spaces.Space:
        mode = self.cfg.actions.mode
        if mode == "joint_pos":
            lo = np.concatenate([self.sim.h.lower, [0.0]]).astype(np.float32)
            hi = np.concatenate([self.sim.h.upper, [1.0]]).astype(np.float32)
            return spaces.Box(lo, hi, dtype=np.float32)
        if mode == "ee_delta":
            return spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)
        if mode == "ee_pose":
            lo, hi = self.base_scene.workspace
            low = np.array([*lo, -1, -1, -1, -1, 0], dtype=np.float32)
            high = np.array([*hi, 1, 1, 1, 1, 1], dtype=np.float32)
            return spaces.Box(low, high, dtype=np.float32)
        if mode == "discrete":
            return spaces.Discrete(14)
        if mode == "pusht_xy":
            return spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)
        raise TaskError(f"unknown control mode {mode!r}; use joint_pos, ee_delta, ee_pose, discrete or pusht_xy")

    def _make_observation_space(self) -> spaces.Dict:
        ocfg = self.cfg.observations
        d: dict[str, spaces.Space] = {}
        if ocfg.state:
            n = len(self.state())
            d["state"] = spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float32)
        if ocfg.proprio:
            d["proprio"] = spaces.Box(-np.inf, np.inf, shape=(PROPRIO_DIM,), dtype=np.float32)
        if ocfg.effort:
            d["effort"] = spaces.Box(-np.inf, np.inf, shape=(7,), dtype=np.float32)
        for cam in self.camera_names():
            w, h = self._image_size(cam)
            if ocfg.rgb:
                d[f"rgb/{cam}"] = spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
            if ocfg.depth:
                d[f"depth/{cam}"] = spaces.Box(0, np.inf, shape=(h, w), dtype=np.float32)
        if ocfg.point_cloud:
            d["point_cloud"] = spaces.Box(-np.inf, np.inf, shape=(ocfg.num_points, 6), dtype=np.float32)
        return spaces.Dict(d)

    def camera_names(self) -> list[str]:
        names = list(self.cfg.observations.cameras) or [c.name for c in self.base_scene.cameras]
        for n in names:
            self.base_scene.camera(n)  # raises a clear error for unknown names
        return names

    def _image_size(self, cam: str) -> tuple[int, int]:
        if self.cfg.observations.image_size is not None:
            return self.cfg.observations.image_size
        c = self.base_scene.camera(cam)
        return c.width, c.height

    # ---- sims --------------------------------------------------------------------------------
    def _sim_for(self, scene: SceneCfg, key: str | None = None) -> TwinSim:
        key = self._scene_key = key or scene.digest()
        sim = self._sims.get(key)
        if sim is None:
            if self.engine == "pybullet":
                from twin.bullet import BulletSim

                sim = BulletSim(scene)
            else:
                sim = TwinSim(self._compiled(scene, key))
            self._sims[key] = sim
            while len(self._sims) > _SIM_CACHE_SIZE:
                old_key, _ = self._sims.popitem(last=False)
                for rk in [k for k in self._renderers if k[0] == old_key]:
                    self._renderers.pop(rk).close()
        else:
            self._sims.move_to_end(key)
        return sim

    def _compiled(self, scene: SceneCfg, key: str) -> CompiledScene:
        """``scene`` compiled; shared with this process's other envs unless the task writes
        into its model."""
        if self.task.writes_model:
            return compile_scene(scene)
        compiled = _SHARED_MODELS.get(key)
        if compiled is None:
            compiled = _SHARED_MODELS[key] = compile_scene(scene)
        return compiled

    def _scene_variant(self, condition: Condition) -> tuple[SceneCfg, str]:
        """The scene under ``condition`` and its digest (remembered per scene values)."""
        condition._check_names()  # an unknown factor is an error even when nothing else changes
        vkey = condition.scene_values_key()
        hit = self._variants.get(vkey)
        if hit is not None:
            self._variants.move_to_end(vkey)
            return hit
        scene = condition.apply_to_scene(self.base_scene, self.task)
        self._variants[vkey] = (scene, scene.digest())
        while len(self._variants) > 4 * _SIM_CACHE_SIZE:
            oldest = next(iter(self._variants))
            if oldest == "":
                self._variants.move_to_end("")
                continue
            self._variants.pop(oldest)
        return self._variants[vkey]

    # ---- gym API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        condition = options.get("condition")
        if condition is None:
            condition = self.suite.sample(seed) if self.suite is not None else nominal_condition()
        elif isinstance(condition, dict):
            condition = Condition.from_dict(condition)
        self.condition = condition
        self.scene, key = self._scene_variant(condition)
        self.sim = self._sim_for(self.scene, key)
        self.sim.track_effort = self.cfg.observations.effort
        self.sim.latency_substeps = int(round(condition.latency_s / self.scene.physics.timestep))
        self._rng = np.random.default_rng(seed)
        self._noise_rng = np.random.default_rng([seed, 1])
        self.task.reset(self.sim, self._rng)
        condition.apply_after_reset(self.sim, self.task)
        self.sim.forward()
        self.steps = 0
        self._failed_reason = ""
        return self._obs(), self._info(success=False)

    def step(self, action: Any):
        report = self.begin_step(action)
        return self.end_step(report, self.physics_step())

    # The three phases of ``step``, for callers stepping many envs at once (the evaluator's
    # workers): every env's action first, then every env's physics, then every env's outcome
    # and observation. Same results as ``step`` per env; each phase's code and data stay
    # in the CPU caches across the batch instead of being evicted by the physics in between.
    def begin_step(self, action: Any) -> dict[str, Any]:
        """Phase 1 of :meth:`step`: check and apply ``action`` (the command for this step)."""
        if self._failed_reason:
            raise RuntimeError("episode has ended (physics_unstable); call reset()")
        return self._apply_action(action)

    def physics_step(self) -> bool:
        """Phase 2 of :meth:`step`: the physics substeps of one control step (False on a blow-up)."""
        t0 = time.perf_counter()
        stable = self.sim.step(self.nsub)
        self.physics_s += time.perf_counter() - t0
        return stable

    def end_step(self, report: dict[str, Any], stable: bool):
        """Phase 3 of :meth:`step`: outcome, termination and observation;
        returns ``(obs, reward, terminated, truncated, info)``."""
        self.steps += 1
        if not stable:
            self._failed_reason = "physics_unstable"
            obs = self._safe_obs()
            info = self._info(success=False, **report)
            info["failure_reason"] = "physics_unstable"
            return obs, 0.0, True, False, info
        success, reward, task_info = self.task.outcome(self.sim)
        terminated = success and self.cfg.terminations.terminate_on_success
        truncated = (not terminated) and self.steps >= self.cfg.terminations.max_steps
        info = self._info(success=success, task_info=task_info, **report)
        if truncated and not success:
            info["failure_reason"] = "timeout"
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        w, h = self.render_size
        return self.render_camera(self.camera_names()[0], w, h)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        self._sims.clear()

    # ---- actions -----------------------------------------------------------------------------
    def _apply_action(self, action: Any) -> dict[str, Any]:
        acfg = self.cfg.actions
        sim = self.sim
        report: dict[str, Any] = {"action_nonfinite": False, "action_clipped": False}
        if acfg.mode == "discrete":
            if isinstance(action, (int, np.integer)) and 0 <= action < 14:  # the common case, checked cheaply
                dpos, drot, grip = self._discrete[int(action)]
                sim.command_delta(dpos, drot, sim.gripper_cmd if grip is None else grip)
                return report
            a = np.asarray(action).reshape(-1)
            if a.size != 1 or not np.isfinite(a).all() or not (0 <= int(a[0]) < 14) or a[0] != int(a[0]):
                report["action_invalid"] = True
                report["action_clipped"] = True
                idx = int(np.clip(np.nan_to_num(a[0] if a.size else 0.0), 0, 13))
            else:
                idx = int(a[0])
            dpos, drot, grip = self._discrete[idx]
            sim.command_delta(dpos, drot, sim.gripper_cmd if grip is None else grip)
            return report
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        space = self.action_space
        assert isinstance(space, spaces.Box)
        if a.shape != space.shape:
            raise TaskError(
                f"action has shape {a.shape}; control mode {acfg.mode!r} expects {space.shape} "
                f"({self.action_description()})"
            )
        if not np.isfinite(a).all():
            report["action_nonfinite"] = True
            a = np.where(np.isfinite(a), a, self._hold_action(a))
        clipped = np.clip(a, space.low, space.high)
        if (clipped != a).any():
            report["action_clipped"] = True
        a = clipped
        if acfg.mode == "joint_pos":
            sim.command_joints(a[:7], a[7])
        elif acfg.mode == "ee_delta":
            dpos = a[:3] * acfg.max_delta_pos
            drot = euler_to_mat(*(a[3:6] * acfg.max_delta_rot))
            sim.command_delta(dpos, drot, 1.0 if a[6] > 0 else 0.0)
        elif acfg.mode == "ee_pose":
            q = a[3:7]
            norm = np.linalg.norm(q)
            rot = quat_to_mat(q / norm) if norm > 1e-6 else sim.target_rot
            sim.command_pose(a[:3], rot, a[7])
        elif acfg.mode == "pusht_xy":
            pusher = getattr(self.task, "apply_pusht_action", None)
            if pusher is None:
                raise TaskError(f"control mode 'pusht_xy' is only for push_t, not {self.task.name!r}")
            pusher(sim, a)
        return report

    def _hold_action(self, a: np.ndarray) -> np.ndarray:
        """Replacement values for non-finite action entries: keep the current command."""
        mode = self.cfg.actions.mode
        sim = self.sim
        if mode == "joint_pos":
            return np.concatenate([sim.q_target, [sim.gripper_cmd]])
        if mode == "ee_delta":
            return np.array([0, 0, 0, 0, 0, 0, 1.0 if sim.gripper_open() else -1.0])
        if mode == "ee_pose":
            return np.concatenate([sim.target_pos, mat_to_quat(sim.target_rot), [sim.gripper_cmd]])
        hold = getattr(self.task, "current_pusht_target", None)
        return hold(sim) if hold is not None else np.full(a.shape, 256.0)

    def action_description(self) -> str:
        return {
            "joint_pos": "7 joint targets in rad + gripper in [0, 1]",
            "ee_delta": "[dx, dy, dz, drx, dry, drz, gripper] in [-1, 1]",
            "ee_pose": "[x, y, z, qw, qx, qy, qz, gripper]",
            "discrete": "one integer in 0..13",
            "pusht_xy": "[x, y] in 0..512 workspace units",
        }[self.cfg.actions.mode]

    # ---- observations ------------------------------------------------------------------------
    def observation_description(self, key: str) -> str:
        """Units of an observation entry ("" when this env has nothing specific to say)."""
        if key == "state":
            return f"task state: {self.task.state_description()}; then robot state: {ROBOT_STATE_UNITS}"
        if key == "proprio":
            return ROBOT_STATE_UNITS
        if key == "effort":
            return "arm joint torques (7), N m"
        return ""

    def robot_state(self) -> np.ndarray:
        """Arm joints, gripper width, TCP position and quaternion wxyz (15, float64)."""
        return self.sim.robot_state()

    def state(self) -> np.ndarray:
        """Privileged state: task state (object poses etc.) + robot state."""
        return np.concatenate([self.task.task_state(self.sim), self.sim.robot_state()], dtype=np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        ocfg = self.cfg.observations
        obs: dict[str, np.ndarray] = {}
        noise = max(ocfg.noise_std, self.condition.obs_noise_std)
        if ocfg.state:
            s = self.state()
            if noise > 0:
                s = s + self._noise_rng.normal(0.0, noise, size=s.shape).astype(np.float32)
            obs["state"] = s
        if ocfg.proprio:
            p = self.robot_state().astype(np.float32)
            if noise > 0:
                p = p + self._noise_rng.normal(0.0, noise, size=p.shape).astype(np.float32)
            obs["proprio"] = p
        if ocfg.effort:
            obs["effort"] = self.sim.arm_effort().astype(np.float32)
        if ocfg.rgb or ocfg.depth or ocfg.point_cloud:
            obs.update(self._camera_obs())
        return obs

    def _camera_obs(self) -> dict[str, np.ndarray]:
        from twin.render import fuse_point_clouds

        ocfg = self.cfg.observations
        out: dict[str, np.ndarray] = {}
        clouds = []
        for cam in self.camera_names():
            w, h = self._image_size(cam)
            if cam in ocfg.splat_cameras:
                from twin.splats.twin_camera import render_twin_camera_splats

                frame = render_twin_camera_splats(
                    self,
                    cam,
                    self._splat_binding(),
                    width=w,
                    height=h,
                    background=self._splat_background,
                    backend=ocfg.splat_backend,
                ).frame
            elif self.engine == "pybullet":
                frame = self.sim.render(cam, w, h)[0]
            else:
                frame = self._renderer(w, h).render(
                    self.sim.data, cam, rgb=ocfg.rgb or ocfg.point_cloud, depth=ocfg.depth or ocfg.point_cloud
                )
            if ocfg.rgb:
                out[f"rgb/{cam}"] = frame.rgb
            if ocfg.depth:
                out[f"depth/{cam}"] = frame.depth
            if ocfg.point_cloud:
                clouds.append(frame.point_cloud())
        if ocfg.point_cloud:
            out["point_cloud"] = fuse_point_clouds(clouds, self.scene.workspace, ocfg.num_points, self._noise_rng)
        return out

    def _splat_binding(self) -> Any:
        """Mesh-sampled splats of the current scene variant, bound to its bodies (made once per
        variant, at the pose it is first rendered in: sampling and binding use the same state),
        or the splats given to :meth:`use_splats`."""
        if self._user_splats is not None:
            return self._user_splats
        if self._splats is None or self._splats[0] != self._scene_key:
            from twin.splats.binding import SplatBinding
            from twin.splats.from_mesh import splats_from_model

            self.sim.forward()
            splats = splats_from_model(self.sim.model, self.sim.data, count=self.cfg.observations.splat_count)
            self._splats = (self._scene_key, SplatBinding(splats, self.sim.model, self.sim.data))
        return self._splats[1]

    def _renderer(self, w: int, h: int):
        from twin.render import Renderer

        key = (self._scene_key, w, h)
        r = self._renderers.get(key)
        if r is None:
            r = Renderer(self.sim.model, w, h)
            self._renderers[key] = r
        return r

    def render_camera(self, camera: str, width: int | None = None, height: int | None = None, depth: bool = False):
        cam = self.scene.camera(camera)
        w, h = width or cam.width, height or cam.height
        if self.engine == "pybullet":
            frame = self.sim.render(camera, w, h)[0]
        else:
            frame = self._renderer(w, h).render(self.sim.data, camera, rgb=not depth, depth=depth)
        return frame.depth if depth else frame.rgb

    def _safe_obs(self) -> dict[str, np.ndarray]:
        """Observation after a blow-up: zeros of the right shapes (state is meaningless)."""
        return {k: np.zeros(sp.shape, dtype=sp.dtype) for k, sp in self.observation_space.spaces.items()}

    def _info(self, success: bool, task_info: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "success": bool(success),
            "is_success": bool(success),
            "condition": self.condition.name,
            "step": self.steps,
            "failure_reason": "",
        }
        info.update(extra)
        if self._failed_reason == "":
            info.update(self.task.info(self.sim) if task_info is None else task_info)
        return info


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def make_env(task: str, **kwargs: Any) -> TwinEnv:
    return TwinEnv(task, **kwargs)


__all__ = ["TwinEnv", "make_env", "PROPRIO_DIM"]
