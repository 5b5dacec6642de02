"""The Franka Panda: offline model loading, actuators, and a damped-least-squares IK.

The arm and hand geometry come from the MJCF and OBJ meshes that the PyPI wheel
``dm-robotics-panda`` ships (Franka's own meshes, Apache-2.0), located through package
metadata so nothing is imported from (or downloaded by) that package. The hand is attached
to the flange rotated -45 degrees about z, as on the real robot. Arm joints get position
servos with Franka-like gains (``RobotCfg.kp/kd``); the hand keeps its tendon actuator
(ctrl 0 = closed, 1 = open).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mujoco
import numpy as np

from twin.scene import RobotCfg, SceneError

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
ARM_ACTUATORS = tuple(f"panda_act{i}" for i in range(1, 8))
GRIPPER_ACTUATOR = "panda_hand_actuator"
TCP_SITE = "TCP"
HAND_BODY = "panda_hand"
# Torque limits of the real arm (N m).
TORQUE_LIMITS = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
GRIPPER_MAX_WIDTH = 0.08
# Rotation of the hand on the flange (-45 deg about z), as in franka_description.
_HAND_QUAT = (math.cos(-math.pi / 8), 0.0, 0.0, math.sin(-math.pi / 8))


@functools.cache
def panda_asset_dir() -> Path:
    """Directory holding panda.xml, panda_hand.xml and the OBJ meshes (offline)."""
    try:
        dist = metadata.distribution("dm-robotics-panda")
    except metadata.PackageNotFoundError as exc:  # pragma: no cover - install error path
        raise SceneError(
            "the Panda model is missing: install it with "
            "`pip install --no-deps dm-robotics-panda==0.4.8` (make install does this)"
        ) from exc
    path = Path(str(dist.locate_file("dm_robotics/panda/assets/panda")))
    if not (path / "panda.xml").is_file():  # pragma: no cover - broken install
        raise SceneError(f"Panda assets not found under {path}; reinstall dm-robotics-panda")
    return path


def _robot_xml() -> str:
    """panda.xml with panda_hand.xml merged under the flange (one MJCF, no attach)."""
    import xml.etree.ElementTree as ET

    root = panda_asset_dir()
    arm = ET.parse(root / "panda.xml").getroot()
    hand = ET.parse(root / "panda_hand.xml").getroot()
    arm_asset = arm.find("asset")
    have = {(e.tag, e.get("name")) for e in arm_asset}
    for e in hand.find("asset"):
        if (e.tag, e.get("name")) not in have:
            arm_asset.append(e)
    for e in list(arm_asset):
        if e.get("file"):
            e.set("file", str(root / e.get("file")))
    flange = next(b for b in arm.iter("body") if b.get("name") == "panda_link8")
    mount = ET.SubElement(flange, "body", name="panda_hand_mount", quat=" ".join(str(v) for v in _HAND_QUAT))
    hand_body = hand.find("worldbody").find("body")
    for site in list(hand_body.findall("site")):
        if site.get("name") == "wrist_site":
            hand_body.remove(site)
    mount.append(hand_body)
    for tag in ("equality", "tendon", "actuator"):
        arm.append(hand.find(tag))
    return ET.tostring(arm, encoding="unicode")


def build_robot_spec(cfg: RobotCfg) -> mujoco.MjSpec:
    """An MjSpec holding the Panda arm + hand, actuated, rooted at ``panda_link0``.

    The scene compiler adds the world (floor, fixtures, cameras) to this same spec.
    """
    arm = mujoco.MjSpec.from_string(_robot_xml())
    base = arm.body("panda_link0")
    base.pos = list(cfg.base.pos)
    base.quat = list(cfg.base.quat)
    # The real hand's fingers are position-controlled by the gripper firmware; give the
    # tendon actuator a configurable force limit.
    act = arm.actuator(GRIPPER_ACTUATOR)
    # Stiffer than the shipped model (kp 600 gives ~17 N on a 6 cm object, too weak to
    # lift a mug): a tendon servo to 0.04 * ctrl with kp ``gripper_kp`` N/m, force-limited
    # like the real hand's grasp force.
    kp = cfg.gripper_kp
    act.gainprm[0] = 0.04 * kp
    act.biasprm[1] = -kp
    act.biasprm[2] = -0.1 * kp
    act.forcerange = [-cfg.gripper_force, cfg.gripper_force]
    # Finger pads: torsional friction so a grasped object cannot spin about the axis
    # through the two contact points (box-cylinder contacts are single points).
    for gname in ("panda_leftfinger_collision", "panda_rightfinger_collision"):
        pad = arm.geom(gname)
        pad.condim = 4
        pad.friction = [1.2, 0.02, 0.0001]
    # Arm servos and joint armature/damping (the armature keeps the servo loop stable).
    for i, (jname, aname) in enumerate(zip(ARM_JOINTS, ARM_ACTUATORS)):
        joint = arm.joint(jname)
        joint.armature = 0.1
        set_joint_coef(joint, "damping", (max(float(np.ravel(joint.damping)[0]), 0.0) + 1.0) * cfg.joint_damping_scale)
        a = arm.add_actuator(name=aname, target=jname, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        a.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        a.gainprm[0] = cfg.kp[i]
        a.biasprm[0] = 0.0
        a.biasprm[1] = -cfg.kp[i]
        a.biasprm[2] = -cfg.kd[i]
        a.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        a.ctrlrange = list(joint.range)
        a.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        a.forcerange = [-TORQUE_LIMITS[i], TORQUE_LIMITS[i]]
    return arm


def set_joint_coef(joint: mujoco.MjsJoint, attr: str, value: float) -> None:
    """Set a joint's linear damping or stiffness (MuJoCo 4 stores them as small polynomials)."""
    coefs = np.zeros_like(np.atleast_1d(np.asarray(getattr(joint, attr), dtype=float)))
    coefs[0] = value
    setattr(joint, attr, coefs if coefs.size > 1 else float(value))


@dataclass
class RobotHandles:
    """Indices into a compiled model for fast access to the robot's state."""

    qpos_adr: np.ndarray  # 7 arm qpos addresses
    dof_adr: np.ndarray  # 7 arm dof addresses
    finger_qpos_adr: np.ndarray  # 2
    arm_act: np.ndarray  # 7 actuator ids
    gripper_act: int
    tcp_site: int
    hand_body: int
    lower: np.ndarray
    upper: np.ndarray

    @staticmethod
    def from_model(model: mujoco.MjModel) -> RobotHandles:
        jids = [model.joint(n).id for n in ARM_JOINTS]
        return RobotHandles(
            qpos_adr=np.array([model.jnt_qposadr[j] for j in jids]),
            dof_adr=np.array([model.jnt_dofadr[j] for j in jids]),
            finger_qpos_adr=np.array([model.jnt_qposadr[model.joint(n).id] for n in FINGER_JOINTS]),
            arm_act=np.array([model.actuator(n).id for n in ARM_ACTUATORS]),
            gripper_act=model.actuator(GRIPPER_ACTUATOR).id,
            tcp_site=model.site(TCP_SITE).id,
            hand_body=model.body(HAND_BODY).id,
            lower=model.jnt_range[jids, 0].copy(),
            upper=model.jnt_range[jids, 1].copy(),
        )


class PandaIK:
    """Damped-least-squares IK for the TCP site, on a scratch MjData (never the sim's).

    ``solve`` returns arm joint positions whose TCP pose approaches (pos, rotation matrix)
    from a seed configuration; orientation error is weighted by ``rot_weight``.
    """

    def __init__(
        self, model: mujoco.MjModel, handles: RobotHandles, damping: float = 1e-2, rot_weight: float = 0.5
    ) -> None:
        self.model = model
        self.h = handles
        self.data = mujoco.MjData(model)
        self.damping = damping
        self.rot_weight = rot_weight
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._damp_eye = (damping**2) * np.eye(6)
        self._eye7 = np.eye(7)
        # The arm's qpos/dof addresses as slices when contiguous (they are for the Panda):
        # slicing is a view, fancy indexing a copy per call.
        self._qadr = contiguous_slice(handles.qpos_adr)
        self._dadr = contiguous_slice(handles.dof_adr)
        # Nominal posture the null space is pulled towards (keeps the elbow up).
        self.rest = None

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and rotation for arm joints ``q`` (copies)."""
        pos, rot = self._fk_view(q)
        return pos.copy(), rot.copy()

    def _fk_view(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        d.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, d)
        return d.site_xpos[self.h.tcp_site], d.site_xmat[self.h.tcp_site].reshape(3, 3)

    def solve(
        self,
        target_pos: np.ndarray,
        target_rot: np.ndarray | None,
        q_seed: np.ndarray,
        iters: int = 20,
        tol: float = 1e-4,
    ) -> np.ndarray:
        """Damped least squares with a null-space pull towards ``rest``:
        dq = v + J^T (J J^T + l^2 I)^-1 (err - J v), v = 0.1 (rest - q), |dq| <= 0.2.

        Runs once per control step of every Cartesian action, so the loop keeps to
        preallocated arrays and MuJoCo's own small dense routines (Cholesky of the 6x6
        system) instead of per-iteration numpy allocations."""
        q = np.array(q_seed, dtype=float)
        d, m, site = self.data, self.model, self.h.tcp_site
        jacp, jacr = self._jacp, self._jacr
        dadr = self._dadr
        lower, upper = self.h.lower, self.h.upper
        use_rot = target_rot is not None
        n = 6 if use_rot else 3
        w = self.rot_weight
        target_pos = np.asarray(target_pos, dtype=float)
        err = np.zeros(n)
        jac = np.zeros((n, 7))
        jjt = np.empty((n, n))
        rhs = np.empty(n)
        sol = np.empty(n)
        damp = self._damp_eye[:n, :n]
        rest = self.rest
        tol2 = tol * tol
        for _ in range(iters):
            pos, rot = self._fk_view(q)
            np.subtract(target_pos, pos, out=err[:3])
            if use_rot:
                err[3:] = rotation_error(target_rot, rot)
                err[3:] *= w
            if float(err @ err) < tol2:
                break
            mujoco.mj_comPos(m, d)
            mujoco.mj_jacSite(m, d, jacp, jacr, site)
            jac[:3] = jacp[:, dadr]
            if use_rot:
                np.multiply(jacr[:, dadr], w, out=jac[3:])
            v = 0.1 * (rest - q) if rest is not None else np.zeros(7)
            np.matmul(jac, jac.T, out=jjt)
            jjt += damp
            np.subtract(err, jac @ v, out=rhs)
            mujoco.mju_cholFactor(jjt, 0.0)
            mujoco.mju_cholSolve(sol, jjt, rhs)
            dq = v + jac.T @ sol
            step = math.sqrt(float(dq @ dq))
            if step > 0.2:
                dq *= 0.2 / step
            q += dq
            np.maximum(q, lower, out=q)  # = np.clip, at a third of its call overhead
            np.minimum(q, upper, out=q)
        return q


def contiguous_slice(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice when it is a contiguous increasing range, else unchanged."""
    idx = np.asarray(idx)
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + int(idx.size))
    return idx


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating ``current`` onto ``target``."""
    r = target @ current.T
    vee = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    cos = min(1.0, max(-1.0, (r[0, 0] + r[1, 1] + r[2, 2] - 1.0) / 2.0))
    angle = math.acos(cos)
    if angle < 1e-6:
        return vee / 2.0
    if angle < 3.0:
        return vee * (angle / (2.0 * math.sin(angle)))
    quat = np.zeros(4)  # near pi the vee form is ill-conditioned: go through a quaternion
    mujoco.mju_mat2Quat(quat, r.reshape(-1))
    if quat[0] < 0:
        quat = -quat
    vec = np.zeros(3)
    mujoco.mju_quat2Vel(vec, quat, 1.0)
    return vec


def quat_to_mat(quat: np.ndarray) -> np.ndarray:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=float))
    return mat.reshape(3, 3)


#: wxyz of the TCP pointing straight down (x axis forward): the orientation the tasks work in.
TCP_QUAT_REFERENCE = np.array([0.0, 1.0, 0.0, 0.0])


def canonical_tcp_quat(quat: np.ndarray) -> np.ndarray:
    """``quat`` (wxyz, in place when it is an array) in the hemisphere of
    :data:`TCP_QUAT_REFERENCE`. The TCP works pointing down, where w is near 0, so the usual
    ``w >= 0`` rule flips the whole quaternion whenever the hand tilts a fraction of a degree
    one way or the other (a policy then sees -1 for +1 on one of its inputs); the sign flips
    here only 180 degrees away from the working orientation. Both engines observe through it
    (the live graph observes through the twin)."""
    q = np.asarray(quat, dtype=float)
    if float(q @ TCP_QUAT_REFERENCE) < 0.0:
        q *= -1.0
    return q


def mat_to_quat(mat: np.ndarray) -> np.ndarray:
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.asarray(mat, dtype=float).reshape(-1))
    return quat


def euler_to_mat(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation from extrinsic x-y-z angles (small-rotation deltas of the discrete actions)."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rxm = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rym = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rzm = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rzm @ rym @ rxm
