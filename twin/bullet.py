"""BulletSim: the scene description built in PyBullet, a second physics engine that plays the
real cell (proxy-real, engine = pybullet).

Built from the same :class:`~twin.scene.SceneCfg` the twin compiles to MuJoCo: fixtures and
objects (their boxes, cylinders, capsules, spheres and meshes, masses, friction), task sites,
cameras (pose and pinhole intrinsics) and the key light. Everything else is PyBullet's own and
differs from the twin on purpose, as a real cell would:

* the robot is ``pybullet_data``'s Franka Panda (``franka_panda/panda.urdf``: its own link
  masses and inertias, finger geometry, and its TCP, the ``panda_grasptarget`` link, 1.6 mm
  from the twin's), driven by PyBullet's joint position motors at the URDF's effort limits
  (87 / 12 N m, 20 N per finger); a new joint target is ramped linearly over the control
  step (as a robot's motion generator interpolates a new set-point) rather than handed to the
  motors at once, which would snap the arm there in a few milliseconds (TCP peaks of 0.6 m/s
  measured for a 0.1 m/s command on push_t, flinging what it touches);
* Cartesian commands (``ee_pose``, ``ee_delta``, ``discrete``) are solved by PyBullet's own
  damped-least-squares IK (``calculateInverseKinematics``) on a kinematic copy of the arm;
* contacts are Bullet's (sequential impulses, no soft constraints; a pair's friction is the
  product of its two surfaces', so each surface gets the square root of the described
  coefficient, :func:`bullet_friction`), images come from its CPU
  TinyRenderer (RGB, depth, segmentation).

It offers the part of :class:`~twin.sim.TwinSim`'s interface that tasks, scripted experts and
:class:`~twin.env.TwinEnv` use (reset, commands, stepping with actuation latency, robot state,
body and site poses, object placement), so the same task code, success predicates and
observation keys run on it. Articulated fixtures (the cabinet's hinge) are not built yet.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from twin.compile import geom_volume
from twin.render import Frame
from twin.robot import GRIPPER_MAX_WIDTH, canonical_tcp_quat
from twin.scene import BodyCfg, CameraCfg, GeomCfg, SceneCfg, SceneError
from twin.sim import DOWN

ENGINE = "pybullet"
PANDA_URDF = "franka_panda/panda.urdf"
ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
HAND_LINK = 8
TCP_LINK = 11  # panda_grasptarget
FLOOR_Z = -0.75  # as twin.compile
DEFAULT_FRICTION = 1.0  # MuJoCo's default sliding friction (geoms that give none)
NEAR, FAR = 0.01, 10.0


def bullet_available() -> str:
    """'' when pybullet imports here, else why not and the fix."""
    try:
        import pybullet  # noqa: F401
        import pybullet_data  # noqa: F401
    except ImportError as exc:
        return f"pybullet is not installed ({exc}); run `make install` (pybullet 3.2.x)"
    return ""


def _xyzw(quat_wxyz: Any) -> list[float]:
    w, x, y, z = (float(v) for v in quat_wxyz)
    return [x, y, z, w]


def _wxyz(quat_xyzw: Any) -> np.ndarray:
    x, y, z, w = quat_xyzw
    q = np.array([w, x, y, z], dtype=float)
    return -q if q[0] < 0 else q


def _rot_to_xyzw(rot: np.ndarray) -> list[float]:
    from twin.robot import mat_to_quat

    return _xyzw(mat_to_quat(np.asarray(rot, dtype=float)))


def projection_matrix(cam: CameraCfg, near: float = NEAR, far: float = FAR) -> list[float]:
    """OpenGL projection (column-major, as PyBullet takes it) from pinhole intrinsics."""
    w, h = cam.width, cam.height
    m = np.zeros((4, 4))
    m[0, 0] = 2.0 * cam.fx / w
    m[1, 1] = 2.0 * cam.fy / h
    m[0, 2] = 1.0 - 2.0 * cam.cx / w
    m[1, 2] = 2.0 * cam.cy / h - 1.0
    m[2, 2] = -(far + near) / (far - near)
    m[2, 3] = -2.0 * far * near / (far - near)
    m[3, 2] = -1.0
    return m.T.reshape(-1).tolist()


class _Handles:
    """Joint limits of the arm (what TwinEnv reads from ``sim.h`` for ``joint_pos``)."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray) -> None:
        self.lower, self.upper = lower, upper


class BulletSim:
    """One scene in its own PyBullet physics server (DIRECT: no GUI, CPU only)."""

    engine = ENGINE

    def __init__(self, scene: SceneCfg) -> None:
        import pybullet as p
        import pybullet_data

        scene.validate()
        self.p = p
        self.scene = scene
        self.client = p.connect(p.DIRECT)
        self._kin = p.connect(p.DIRECT)  # a kinematic copy of the arm: FK and IK seeds, never stepped
        data = pybullet_data.getDataPath()
        for c in (self.client, self._kin):
            p.setAdditionalSearchPath(data, physicsClientId=c)
        phys = scene.physics
        self.timestep = float(phys.timestep)
        p.setTimeStep(self.timestep, physicsClientId=self.client)
        p.setGravity(*phys.gravity, physicsClientId=self.client)
        base = scene.robot.base
        self.robot = p.loadURDF(
            PANDA_URDF,
            basePosition=base.pos,
            baseOrientation=_xyzw(base.quat),
            useFixedBase=True,
            physicsClientId=self.client,
        )
        self._kin_robot = p.loadURDF(
            PANDA_URDF,
            basePosition=base.pos,
            baseOrientation=_xyzw(base.quat),
            useFixedBase=True,
            physicsClientId=self._kin,
        )
        info = [p.getJointInfo(self.robot, j, physicsClientId=self.client) for j in ARM_JOINTS]
        self.h = _Handles(np.array([i[8] for i in info]), np.array([i[9] for i in info]))
        self.max_force = [float(i[10]) for i in info]
        self.finger_force = float(p.getJointInfo(self.robot, FINGER_JOINTS[0], physicsClientId=self.client)[10])
        self._ranges = list(self.h.upper - self.h.lower) + [0.04, 0.04]
        self._movable = [
            j
            for j in range(p.getNumJoints(self.robot, physicsClientId=self.client))
            if p.getJointInfo(self.robot, j, physicsClientId=self.client)[2] != p.JOINT_FIXED
        ]
        self._floor()
        self.bodies: dict[str, int] = {}
        self.free: set[str] = set()
        self._com: dict[str, np.ndarray] = {}  # base inertial frame in the body frame
        for body in scene.bodies:
            if body.parent:
                raise SceneError(
                    f"body {body.name!r} hangs from {body.parent!r}: the PyBullet engine builds world bodies only; "
                    f"leave it out of scenes played by PyBullet (e.g. the hand-eye board)"
                )
            self._add_body(body)
        self._home = np.array(scene.robot.home_qpos, dtype=float)
        self.latency_substeps = 0
        self.track_effort = False  # see arm_effort
        self._effort_sum = np.zeros(7)
        self._effort_n = 0
        self._pending: deque[tuple[int, np.ndarray]] = deque()
        self._substep = 0
        self.q_target = self._home.copy()
        self.gripper_cmd = 1.0
        self.target_pos = np.zeros(3)
        self.target_rot = DOWN.copy()
        self._applied = np.concatenate([self.q_target, [self.gripper_cmd]])
        self._ramp: tuple[np.ndarray, np.ndarray, int, int] | None = None  # (from, to, done, of)
        self.reset_robot()

    # ---- building ---------------------------------------------------------------------------
    def _floor(self) -> None:
        p = self.p
        shape = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=self.client)
        vis = p.createVisualShape(
            p.GEOM_BOX,
            halfExtents=[3.0, 3.0, 0.001],
            rgbaColor=list(self.scene.floor_rgba),
            physicsClientId=self.client,
        )
        p.createMultiBody(0.0, shape, vis, basePosition=[0.0, 0.0, FLOOR_Z], physicsClientId=self.client)

    def _shape(self, g: GeomCfg, dynamic: bool) -> tuple[int, int]:
        """(collision, visual) shape ids of one geom, in the body frame."""
        p, c = self.p, self.client
        pos, orn = list(g.pose.pos), _xyzw(g.pose.quat)
        kw: dict[str, Any]
        if g.type == "box":
            kind, kw = p.GEOM_BOX, {"halfExtents": list(g.size)}
        elif g.type == "sphere":
            kind, kw = p.GEOM_SPHERE, {"radius": g.size[0]}
        elif g.type in ("cylinder", "capsule"):
            kind = p.GEOM_CYLINDER if g.type == "cylinder" else p.GEOM_CAPSULE
            kw = {"radius": g.size[0], "height": 2.0 * g.size[1]}
        elif g.type == "mesh":
            if not g.mesh or not Path(g.mesh).is_file():
                raise SceneError(f"geom {g.name!r}: mesh file {g.mesh!r} not found")
            kind, kw = p.GEOM_MESH, {"fileName": str(g.mesh), "meshScale": list(g.mesh_scale)}
        else:
            raise SceneError(f"geom {g.name!r}: type {g.type!r} is not built in the pybullet engine")
        col = -1
        if g.collide:
            ckw = dict(kw)
            if kind == p.GEOM_CYLINDER or kind == p.GEOM_CAPSULE:
                ckw = {"radius": kw["radius"], "height": kw["height"]}
            if kind == p.GEOM_MESH and not dynamic:
                ckw["flags"] = p.GEOM_FORCE_CONCAVE_TRIMESH
            col = p.createCollisionShape(
                kind, collisionFramePosition=pos, collisionFrameOrientation=orn, physicsClientId=c, **ckw
            )
        vis = -1
        if g.visible:
            vkw = dict(kw)
            if kind in (p.GEOM_CYLINDER, p.GEOM_CAPSULE):
                vkw = {"radius": kw["radius"], "length": kw["height"]}
            vis = p.createVisualShape(
                kind,
                visualFramePosition=pos,
                visualFrameOrientation=orn,
                rgbaColor=list(g.rgba),
                physicsClientId=c,
                **vkw,
            )
        return col, vis

    def _add_body(self, body: BodyCfg) -> None:
        p, c = self.p, self.client
        if body.children or (body.joint is not None and body.joint.type != "free"):
            raise SceneError(
                f"body {body.name!r}: articulated bodies (hinge/slide joints, child bodies) are not "
                "built in the pybullet engine yet; use a task without them"
            )
        dynamic = body.joint is not None  # free
        shapes = [self._shape(g, dynamic) for g in body.geoms]
        vols = np.array([geom_volume(g) for g in body.geoms])  # meshes: 0
        if vols.sum() <= 0:
            vols = np.ones(len(vols))
        # as twin.compile: the body's mass shared by geom volume, else MuJoCo's density
        total = float(body.mass) if body.mass is not None else 1000.0 * float(vols.sum())
        masses = (total * vols / vols.sum()) if dynamic else np.zeros(len(vols))
        n = len(shapes) - 1
        # each geom's share of the mass sits at the geom's centre (uniform density, as MuJoCo):
        # the base link's at its first geom's. PyBullet reports and places a base by that
        # inertial frame, so body_pose / set_free_body_pose convert to the body frame.
        base_com = np.array(body.geoms[0].pose.pos, dtype=float) if dynamic else np.zeros(3)
        self._com[body.name] = base_com
        uid = p.createMultiBody(
            baseMass=float(masses[0]),
            baseCollisionShapeIndex=shapes[0][0],
            baseVisualShapeIndex=shapes[0][1],
            basePosition=list(body.pose.pos),
            baseOrientation=_xyzw(body.pose.quat),
            baseInertialFramePosition=list(base_com),
            linkMasses=[float(m) for m in masses[1:]],
            linkCollisionShapeIndices=[s[0] for s in shapes[1:]],
            linkVisualShapeIndices=[s[1] for s in shapes[1:]],
            linkPositions=[[0.0, 0.0, 0.0]] * n,
            linkOrientations=[[0.0, 0.0, 0.0, 1.0]] * n,
            linkInertialFramePositions=[list(g.pose.pos) for g in body.geoms[1:]],
            linkInertialFrameOrientations=[[0.0, 0.0, 0.0, 1.0]] * n,
            linkParentIndices=[0] * n,
            linkJointTypes=[p.JOINT_FIXED] * n,
            linkJointAxis=[[0.0, 0.0, 1.0]] * n,
            physicsClientId=c,
        )
        for link, g in zip(range(-1, n), body.geoms, strict=True):
            p.changeDynamics(
                uid,
                link,
                lateralFriction=bullet_friction(g.friction),
                physicsClientId=c,
            )
        self.bodies[body.name] = uid
        if dynamic:
            self.free.add(body.name)

    # ---- reset / state ----------------------------------------------------------------------
    def reset_robot(self, qpos: np.ndarray | None = None, gripper_open: bool = True) -> None:
        p, c = self.p, self.client
        q = np.array(self._home if qpos is None else qpos, dtype=float)
        for j, v in zip(ARM_JOINTS, q, strict=True):
            p.resetJointState(self.robot, j, float(v), 0.0, physicsClientId=c)
        half = GRIPPER_MAX_WIDTH / 2 if gripper_open else 0.0
        for j in FINGER_JOINTS:
            p.resetJointState(self.robot, j, half, 0.0, physicsClientId=c)
        for name in self.free:  # objects at rest where the scene puts them
            b = self.scene.body(name)
            self.set_free_body_pose(name, np.array(b.pose.pos), np.array(b.pose.quat))
        self.q_target = q.copy()
        self.gripper_cmd = 1.0 if gripper_open else 0.0
        self._pending.clear()
        self._substep = 0
        self._ramp = None
        self._apply(np.concatenate([self.q_target, [self.gripper_cmd]]))
        self.target_pos, self.target_rot = self.tcp_pose_mat()

    def forward(self) -> None:
        """Nothing to do: PyBullet computes link poses on request."""

    def _link(self, link: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.p.getLinkState(self.robot, link, computeForwardKinematics=True, physicsClientId=self.client)
        return np.array(s[4]), np.array(self.p.getMatrixFromQuaternion(s[5])).reshape(3, 3)

    def tcp_pose_mat(self) -> tuple[np.ndarray, np.ndarray]:
        return self._link(TCP_LINK)

    def tcp_pose(self) -> np.ndarray:
        s = self.p.getLinkState(self.robot, TCP_LINK, computeForwardKinematics=True, physicsClientId=self.client)
        return np.concatenate([s[4], canonical_tcp_quat(_wxyz(s[5]))])

    def robot_state(self) -> np.ndarray:
        """Arm joints (7), gripper width (1), TCP position (3) and quaternion wxyz (4)."""
        out = np.empty(15)
        out[:7] = self.arm_qpos()
        out[7] = self.gripper_width()
        out[8:15] = self.tcp_pose()
        return out

    def _joint_states(self, joints: Any) -> list[Any]:
        return self.p.getJointStates(self.robot, list(joints), physicsClientId=self.client)

    def arm_qpos(self) -> np.ndarray:
        return np.array([s[0] for s in self._joint_states(ARM_JOINTS)])

    def arm_effort(self) -> np.ndarray:
        """The arm motors' applied torques (7, N m), averaged over the last step's substeps when
        ``track_effort`` is on (as twin.sim.TwinSim), else at the last substep."""
        if self.track_effort and self._effort_n:
            return self._effort_sum / self._effort_n
        return self._effort_now()

    def _effort_now(self) -> np.ndarray:
        return np.array([s[3] for s in self._joint_states(ARM_JOINTS)])

    def arm_qvel(self) -> np.ndarray:
        return np.array([s[1] for s in self._joint_states(ARM_JOINTS)])

    def gripper_width(self) -> float:
        return float(sum(s[0] for s in self._joint_states(FINGER_JOINTS)))

    def gripper_open(self) -> bool:
        return self.gripper_cmd > 0.5

    def body_pose(self, name: str) -> np.ndarray:
        """World position (3) + quaternion wxyz (4) of a body."""
        uid = self.bodies.get(name)
        if uid is None:
            raise SceneError(f"scene {self.scene.name!r} has no body {name!r} (bodies: {sorted(self.bodies)})")
        pos, orn = self.p.getBasePositionAndOrientation(uid, physicsClientId=self.client)
        return np.concatenate([np.asarray(pos) - self._com_offset(name, orn), _wxyz(orn)])

    def _com_offset(self, name: str, orn_xyzw: Any) -> np.ndarray:
        """World vector from a body's frame to its base inertial frame (how PyBullet reports
        and places a base) at orientation ``orn_xyzw``."""
        com = self._com[name]
        if not com.any():
            return com
        return np.array(self.p.getMatrixFromQuaternion(orn_xyzw)).reshape(3, 3) @ com

    def set_free_body_pose(self, name: str, pos: np.ndarray, quat: np.ndarray) -> None:
        if name not in self.free:
            raise SceneError(f"body {name!r} has no free joint; only free objects can be placed")
        q = np.asarray(quat, dtype=float)
        uid = self.bodies[name]
        orn = _xyzw(q / np.linalg.norm(q))
        pos = np.asarray(pos, dtype=float) + self._com_offset(name, orn)
        self.p.resetBasePositionAndOrientation(uid, list(map(float, pos)), orn, physicsClientId=self.client)
        self.p.resetBaseVelocity(uid, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], physicsClientId=self.client)

    def site_pos(self, name: str) -> np.ndarray:
        site = self.scene.site(name)
        if site.body:
            raise SceneError(f"site {name!r} moves with body {site.body!r}: not supported in the pybullet engine yet")
        return np.array(site.pos, dtype=float)

    def is_free(self, name: str) -> bool:
        """True for a body with a free joint (an object that can be placed)."""
        return name in self.free

    def is_stable(self) -> bool:
        q = self.arm_qpos()
        if not np.isfinite(q).all():
            return False
        return all(np.isfinite(self.body_pose(n)).all() for n in self.free)

    # ---- commands ---------------------------------------------------------------------------
    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and rotation for arm joints ``q`` (on the kinematic copy)."""
        p = self.p
        for j, v in zip(ARM_JOINTS, q, strict=True):
            p.resetJointState(self._kin_robot, j, float(v), physicsClientId=self._kin)
        s = p.getLinkState(self._kin_robot, TCP_LINK, computeForwardKinematics=True, physicsClientId=self._kin)
        return np.array(s[4]), np.array(p.getMatrixFromQuaternion(s[5])).reshape(3, 3)

    def ik(self, pos: np.ndarray, rot: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """PyBullet's IK for the TCP, seeded at ``seed`` (null space pulled to the home posture)."""
        p = self.p
        for j, v in zip(ARM_JOINTS, seed, strict=True):
            p.resetJointState(self._kin_robot, j, float(v), physicsClientId=self._kin)
        sol = p.calculateInverseKinematics(
            self._kin_robot,
            TCP_LINK,
            list(map(float, pos)),
            _rot_to_xyzw(rot),
            lowerLimits=list(self.h.lower) + [0.0, 0.0],
            upperLimits=list(self.h.upper) + [0.04, 0.04],
            jointRanges=self._ranges,
            restPoses=list(self._home) + [0.02, 0.02],
            maxNumIterations=100,
            residualThreshold=1e-5,
            physicsClientId=self._kin,
        )
        return np.clip(np.array(sol[:7]), self.h.lower, self.h.upper)

    def command_joints(self, q: np.ndarray, gripper: float) -> None:
        self.q_target = np.clip(np.asarray(q, dtype=float), self.h.lower, self.h.upper)
        self.gripper_cmd = _unit_clip(gripper)
        self.target_pos, self.target_rot = self.fk(self.q_target)

    def command_pose(self, pos: np.ndarray, rot: np.ndarray, gripper: float) -> None:
        self.target_pos = np.asarray(pos, dtype=float)
        self.target_rot = np.asarray(rot, dtype=float)
        self.q_target = self.ik(self.target_pos, self.target_rot, self.q_target)
        self.gripper_cmd = _unit_clip(gripper)

    def command_delta(self, dpos: np.ndarray, drot: np.ndarray, gripper: float) -> None:
        self.command_pose(self.target_pos + dpos, drot @ self.target_rot, gripper)

    def _apply(self, ctrl: np.ndarray) -> None:
        p, c = self.p, self.client
        self._applied = ctrl
        p.setJointMotorControlArray(
            self.robot,
            list(ARM_JOINTS),
            p.POSITION_CONTROL,
            targetPositions=[float(v) for v in ctrl[:7]],
            forces=self.max_force,
            physicsClientId=c,
        )
        half = float(ctrl[7]) * GRIPPER_MAX_WIDTH / 2
        p.setJointMotorControlArray(
            self.robot,
            list(FINGER_JOINTS),
            p.POSITION_CONTROL,
            targetPositions=[half, half],
            forces=[self.finger_force] * 2,
            physicsClientId=c,
        )

    def _start_ramp(self, ctrl: np.ndarray, nsub: int) -> None:
        """Ramp the motors' set-point from where it is to ``ctrl`` over ``nsub`` physics steps."""
        if self._ramp is not None and np.array_equal(ctrl, self._ramp[1]):
            return  # the same set-point: the ramp in progress continues
        if np.array_equal(ctrl, self._applied) or nsub <= 1:
            self._ramp = None
            self._apply(ctrl)
        else:
            self._ramp = (self._applied.copy(), ctrl, 0, nsub)

    def step(self, nsub: int) -> bool:
        """Advance ``nsub`` physics steps applying the current command (with latency), its
        set-point ramped over those steps."""
        ctrl = np.concatenate([self.q_target, [self.gripper_cmd]])
        if self.latency_substeps > 0:
            self._pending.append((self._substep + self.latency_substeps, ctrl))
        else:
            self._start_ramp(ctrl, nsub)
        self._effort_sum = np.zeros(7)
        self._effort_n = 0
        for _ in range(nsub):
            while self._pending and self._pending[0][0] <= self._substep:
                self._start_ramp(self._pending.popleft()[1], nsub)
            if self._ramp is not None:
                start, end, k, n = self._ramp
                k += 1
                self._apply(start + (end - start) * (k / n))
                self._ramp = None if k >= n else (start, end, k, n)
            self.p.stepSimulation(physicsClientId=self.client)
            self._substep += 1
            if self.track_effort:
                self._effort_sum += self._effort_now()
                self._effort_n += 1
        return self.is_stable()

    # ---- cameras ----------------------------------------------------------------------------
    def render(
        self, camera: str, width: int | None = None, height: int | None = None, segmentation: bool = False
    ) -> tuple[Frame, np.ndarray | None]:
        """One image of a scene camera from the TinyRenderer (CPU) at the camera's pose and
        intrinsics (scaled to ``width`` x ``height``; default: the camera's own size): a
        :class:`~twin.render.Frame` (RGB, metric depth along the optical axis, what lifts depth
        to 3-D) and, with ``segmentation``, the body id per pixel (-1: background)."""
        p = self.p
        cam = self.scene.camera(camera)
        w, h = width or cam.width, height or cam.height
        sx, sy = w / cam.width, h / cam.height
        scaled = CameraCfg(
            name=cam.name, width=w, height=h, fx=cam.fx * sx, fy=cam.fy * sy, cx=cam.cx * sx, cy=cam.cy * sy
        )
        view = p.computeViewMatrix(list(cam.pos), list(cam.target), list(cam.up), physicsClientId=self.client)
        light = self.scene.lights[0] if self.scene.lights else None
        kw: dict[str, Any] = {}
        if light is not None:
            d = -np.asarray(light.dir, dtype=float)
            kw = {"lightDirection": list(d / (np.linalg.norm(d) or 1.0)), "lightColor": list(light.diffuse)}
        flags = 0 if segmentation else p.ER_NO_SEGMENTATION_MASK
        _, _, rgba, depth_buf, seg = p.getCameraImage(
            w,
            h,
            viewMatrix=view,
            projectionMatrix=projection_matrix(scaled),
            renderer=p.ER_TINY_RENDERER,
            shadow=0,
            flags=flags,
            physicsClientId=self.client,
            **kw,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[..., :3].copy()
        zb = np.asarray(depth_buf, dtype=np.float64).reshape(h, w)
        depth = (FAR * NEAR / (FAR - (FAR - NEAR) * zb)).astype(np.float32)
        forward = np.asarray(cam.target, dtype=float) - np.asarray(cam.pos, dtype=float)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.asarray(cam.up, dtype=float))
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        frame = Frame(
            camera=camera,
            rgb=rgb,
            depth=depth,
            intrinsics=scaled.intrinsic_matrix(),
            cam_pos=np.asarray(cam.pos, dtype=float),
            cam_rot=np.stack([right, up, -forward], axis=1),
            far=FAR,
        )
        body = None
        if segmentation:
            segm = np.asarray(seg, dtype=np.int64).reshape(h, w)
            body = np.where(segm < 0, -1, segm & ((1 << 24) - 1)).astype(np.int32)
        return frame, body

    def body_mask(self, segmentation: np.ndarray, name: str) -> np.ndarray:
        """Pixels of body ``name`` in a segmentation from :meth:`render`."""
        return segmentation == self.bodies[name]

    def close(self) -> None:
        for c in (self.client, self._kin):
            try:
                self.p.disconnect(physicsClientId=c)
            except Exception:  # already gone
                pass

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def bullet_friction(mu: float | None) -> float:
    """A geom's sliding friction in the scene description -> PyBullet's lateral friction.

    The description's coefficient is the pair's own friction when both surfaces have it (MuJoCo
    takes the larger of the two); Bullet multiplies the two surfaces' coefficients, so each
    side gets the square root: a pair of equal materials then slides at the described
    coefficient (without it, the T of push_t would slide on the table at 0.25, not 0.5).
    """
    return float(np.sqrt(DEFAULT_FRICTION if mu is None else mu))


def _unit_clip(v: float) -> float:
    v = float(v)
    return 0.0 if v < 0.0 else 1.0 if v > 1.0 else v
