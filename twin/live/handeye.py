"""Camera extrinsics by hand-eye calibration with a ChArUco board (``twinrank live calibrate-camera``).

Eye-to-hand: the camera is fixed in the cell, a ChArUco board is held by the gripper. At each of
a few robot poses the board's pose in the camera (``T_cam_board``, ChArUco corners + PnP) and
the gripper's pose in the robot base (``T_base_gripper``) give one equation
``T_base_gripper @ T_gripper_board = T_base_cam @ T_cam_board`` with two unknowns (the camera in
the base, the board on the gripper). OpenCV's ``cv2.calibrateHandEye`` solves them in closed
form (fed with the inverse robot poses: the eye-to-hand form of the eye-in-hand problem); a
least-squares refinement (scipy) then minimises the reprojection error of every detected
corner through the whole chain. With the board at a known place (on the hand at a known mount,
or fixed in the scene) each view gives the camera directly: ``T_base_cam = T_base_board @
inv(T_cam_board)``, averaged and refined the same way.

Frames: the robot base frame (``SceneCfg.robot.base``), camera optical frames (OpenCV: x right,
y down, z forward; :mod:`twin.live.camera_model`), the board frame of OpenCV's ChArUco board
(origin at the board's top-left corner, x along the squares' columns, y along the rows, z
into the board), the gripper frame = the twin's ``panda_hand`` body.

Which gripper pose: ``T_base_gripper`` is the twin's forward kinematics of ``panda_hand`` at the
robot's *measured* joint positions, not franky's ``O_T_EE``. The result goes into the twin,
whose robot is placed by its own kinematics from the same joint positions, so this keeps the
chain the twin will use (the twin's hand where the twin draws it); ``O_T_EE`` adds the end
effector frame configured in Desk (``F_T_EE``) and, in franka-sim, the FR3 model's kinematics,
neither of which the twin uses. For the eye-to-hand solution any gripper frame rigid with the
flange would do (the board mount absorbs the offset); for the known-mount variant and for the
fake hardware (the twin renders the board where the twin's kinematics put it) it must be the
twin's. ``O_T_EE`` is recorded with each view for reference.

Nothing here imports rclpy; OpenCV (``perception`` extra), franky and pyrealsense2 (``hardware``
extra) are imported where used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from twin.live.camera_model import (
    PinholeCamera,
    base_from_world,
    invert,
    matrix_pose,
    pose_matrix,
    rotation_angle_deg,
)
from twin.robot import HAND_BODY, TCP_SITE, PandaIK, RobotHandles
from twin.scene import BodyCfg, CameraCfg, GeomCfg, Pose, SceneCfg, TextureCfg

log = logging.getLogger(__name__)

#: name of the board body added to a scene
BOARD_BODY = "charuco_board"
#: a view needs at least this many ChArUco corners (not all on one line)
MIN_CORNERS = 8
#: hand-eye methods (cv2.CALIB_HAND_EYE_*)
METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis")
#: motions retried after a communication_constraints_violation reflex (a busy, non-realtime host)
TIMING_RETRIES = 3
#: FR3 joint position limits (rad; Franka datasheet): poses must also be reachable on an FR3
FR3_Q_MIN = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
FR3_Q_MAX = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])


class CalibrationError(ValueError):
    """Calibration cannot go on: the message says why and what to do."""


# ==== the board ===============================================================================


@dataclass(frozen=True)
class CharucoBoardSpec:
    """A ChArUco board: ``squares_x`` x ``squares_y`` chessboard squares of ``square`` m with
    ArUco markers of ``marker`` m from ``dictionary`` (a ``cv2.aruco.DICT_*`` name). The
    default fits an A4 sheet (28 x 20 cm); an odd number of rows avoids OpenCV's legacy-pattern
    ambiguity (OpenCV >= 4.6 draws even-row boards differently)."""

    squares_x: int = 7
    squares_y: int = 5
    square: float = 0.04
    marker: float = 0.03
    dictionary: str = "DICT_4X4_50"

    @property
    def width(self) -> float:
        return self.squares_x * self.square

    @property
    def height(self) -> float:
        return self.squares_y * self.square

    def cv_board(self) -> Any:
        import cv2

        if not hasattr(cv2.aruco, self.dictionary):
            raise CalibrationError(
                f"board dictionary {self.dictionary!r}: not a cv2.aruco dictionary (DICT_4X4_50, ...)"
            )
        dic = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square, self.marker, dic)

    def image(self, pixels_per_m: float = 4000.0) -> np.ndarray:
        """The printed board (uint8 grey), exactly ``width`` x ``height`` m at ``pixels_per_m``,
        no margin: print it at that scale (or check the printed square size)."""
        size = (round(self.width * pixels_per_m), round(self.height * pixels_per_m))
        return self.cv_board().generateImage(size, marginSize=0, borderBits=1)

    def image_file(self, directory: str | Path | None = None) -> Path:
        """The board image as a PNG (written once per board spec; default: the temp directory)."""
        import cv2

        key = hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]
        folder = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / "twinrank-charuco"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"charuco_{self.squares_x}x{self.squares_y}_{key}.png"
        if not path.is_file():
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.png")
            cv2.imwrite(str(tmp), self.image())
            tmp.replace(path)
        return path

    def corners(self) -> np.ndarray:
        """(N, 3) ChArUco corners in the board frame (ids 0..N-1)."""
        return np.asarray(self.cv_board().getChessboardCorners(), float).reshape(-1, 3)

    def outline(self) -> np.ndarray:
        """(4, 3) outer corners of the printed board in the board frame."""
        w, h = self.width, self.height
        return np.array([[0.0, 0.0, 0.0], [w, 0.0, 0.0], [w, h, 0.0], [0.0, h, 0.0]])


# ---- the board on the hand -------------------------------------------------------------------
#: the printed face's centre in the hand frame is at hand z = PATTERN_TOP_Z + height / 2: the
#: pattern starts just past the fingertips (hand z 0.112 m), the plate's tab is held between them
PATTERN_TOP_Z = 0.118
TAB_TOP_Z = 0.075
PRINT_THICKNESS = 0.0005
PLATE_THICKNESS = 0.003
PLATE_MARGIN = 0.008
#: printed face normal = hand +y, image columns along hand +x, image rows along hand +z
_R_HAND_FACE = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
#: board frame (OpenCV: x columns, y rows, z into the board) in the printed face's frame
_R_FACE_BOARD = np.diag([1.0, -1.0, -1.0])


def board_body_pose(board: CharucoBoardSpec) -> Pose:
    """Pose of the board body (centre of the printed face, z its outward normal) in the hand frame."""
    from twin.robot import mat_to_quat

    pos = (0.0, 0.0, PATTERN_TOP_Z + board.height / 2.0)
    return Pose(pos=pos, quat=tuple(float(v) for v in mat_to_quat(_R_HAND_FACE)))


def body_board_transform(board: CharucoBoardSpec) -> np.ndarray:
    """T_body_board: the board frame in the board body's frame (centre of the printed face)."""
    t = np.eye(4)
    t[:3, :3] = _R_FACE_BOARD
    t[:3, 3] = (-board.width / 2.0, board.height / 2.0, 0.0)
    return t


def hand_board_transform(board: CharucoBoardSpec) -> np.ndarray:
    """T_hand_board of :func:`board_body` on the hand: the board frame in the hand frame (the known mount)."""
    pose = board_body_pose(board)
    return pose_matrix(pose.pos, pose.quat) @ body_board_transform(board)


def scene_board_transform(scene: SceneCfg, board: CharucoBoardSpec | None = None) -> np.ndarray:
    """T_base_board of a board fixed in the scene (a :func:`board_body` with ``parent=""``):
    the "board at a known place" variant (:func:`calibrate_known_board`)."""
    body = scene.body(BOARD_BODY)
    if body.parent:
        raise CalibrationError(f"the board is attached to {body.parent!r}, not fixed in the scene")
    return (
        base_from_world(scene)
        @ pose_matrix(body.pose.pos, body.pose.quat)
        @ body_board_transform(board or CharucoBoardSpec())
    )


def board_body(
    board: CharucoBoardSpec | None = None,
    parent: str = HAND_BODY,
    image_dir: str | Path | None = None,
    collide: bool = False,
    name: str = BOARD_BODY,
    pose: Pose | None = None,
) -> BodyCfg:
    """The board as a scene body held by the gripper: a white plate whose tab sits between the
    fingers, the printed board (texture, exactly the board's size) on its hand +y face, hanging
    past the fingertips along the hand's approach axis. With the hand pointing down the board
    stands upright, its printed side facing the hand's +y; :func:`calibration_poses` turns it
    to the camera. Visual only unless ``collide`` (planning checks the board for contacts).
    ``parent=""`` and ``pose`` (of the printed face's centre, z its outward normal, in the world)
    fix the board in the scene instead."""
    board = board or CharucoBoardSpec()
    hx, hy = board.width / 2.0, board.height / 2.0
    tab = PATTERN_TOP_Z - TAB_TOP_Z  # plate above the pattern, towards the flange (face +y)
    plate_hy = hy + PLATE_MARGIN / 2.0 + tab / 2.0
    plate_cy = (hy + tab - (hy + PLATE_MARGIN)) / 2.0
    texture = TextureCfg(builtin="file", file=str(board.image_file(image_dir)), repeat=(1.0 / hx, 1.0 / hy))
    white = (0.95, 0.95, 0.95, 1.0)
    return BodyCfg(
        name=name,
        kind="calibration_board",
        parent=parent,
        pose=pose if pose is not None else board_body_pose(board),
        geoms=[
            # MuJoCo maps one copy of the texture (texrepeat = 1 / half-size, uniform) onto the
            # box's +z face, image columns along +x and row 0 at +y (checked by the tests)
            GeomCfg(
                name=f"{name}_print",
                type="box",
                size=(hx, hy, PRINT_THICKNESS / 2.0),
                pose=Pose(pos=(0.0, 0.0, -PRINT_THICKNESS / 2.0)),
                rgba=(1.0, 1.0, 1.0, 1.0),
                texture=texture,
                collide=collide,
            ),
            GeomCfg(
                name=f"{name}_plate",
                type="box",
                size=(hx + PLATE_MARGIN, plate_hy, PLATE_THICKNESS / 2.0),
                pose=Pose(pos=(0.0, plate_cy, -PRINT_THICKNESS - PLATE_THICKNESS / 2.0)),
                rgba=white,
                collide=collide,
            ),
        ],
    )


def scene_with_board(
    scene: SceneCfg,
    board: CharucoBoardSpec | None = None,
    parent: str = HAND_BODY,
    image_dir: str | Path | None = None,
    collide: bool = False,
    pose: Pose | None = None,
) -> SceneCfg:
    """A copy of ``scene`` with the board held by the gripper, or fixed at ``pose`` with
    ``parent=""`` (replacing a previous board)."""
    out = scene.copy()
    out.bodies = [b for b in out.bodies if b.name != BOARD_BODY]
    out.bodies.append(board_body(board, parent, image_dir, collide, pose=pose))
    return out


# ==== detection ===============================================================================


@dataclass
class BoardView:
    """The board seen in one image: its pose in the camera and the corners it rests on."""

    T_cam_board: np.ndarray  # 4x4
    ids: np.ndarray  # (N,) ChArUco corner ids
    image_points: np.ndarray  # (N, 2) px
    object_points: np.ndarray  # (N, 3) board frame
    reprojection_px: float  # RMS of the PnP fit

    @property
    def corners(self) -> int:
        return len(self.ids)


class BoardNotDetected(CalibrationError):
    """No usable board in an image (the message says why)."""


def detect_board(
    rgb: np.ndarray,
    K: np.ndarray,
    board: CharucoBoardSpec | None = None,
    dist: np.ndarray | None = None,
    min_corners: int = MIN_CORNERS,
) -> BoardView:
    """ChArUco corners in an RGB (or grey) image and the board's pose in the camera (IPPE for
    planar targets, then Levenberg-Marquardt). Raises :class:`BoardNotDetected` when fewer than
    ``min_corners`` corners are found or they lie on one line."""
    import cv2

    board = board or CharucoBoardSpec()
    cvb = board.cv_board()
    img = np.asarray(rgb)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    detector = cv2.aruco.CharucoDetector(cvb)
    ch_corners, ch_ids, _, marker_ids = detector.detectBoard(grey)
    n_markers = 0 if marker_ids is None else len(marker_ids)
    n = 0 if ch_ids is None else len(ch_ids)
    if n < min_corners:
        raise BoardNotDetected(f"{n} ChArUco corners ({n_markers} markers) found, {min_corners} needed")
    if cvb.checkCharucoCornersCollinear(ch_ids):
        raise BoardNotDetected(f"the {n} ChArUco corners found lie on one line")
    obj, imgp = cvb.matchImagePoints(ch_corners, ch_ids)
    obj = np.asarray(obj, float).reshape(-1, 3)
    imgp = np.asarray(imgp, float).reshape(-1, 2)
    K = np.asarray(K, float)
    d = np.zeros(5) if dist is None else np.asarray(dist, float)
    ok, rvecs, tvecs, _ = cv2.solvePnPGeneric(obj, imgp, K, d, flags=cv2.SOLVEPNP_IPPE)
    if not ok or not len(rvecs):
        raise BoardNotDetected(f"PnP failed on {n} corners")
    rvec, tvec = cv2.solvePnPRefineLM(obj, imgp, K, d, rvecs[0], tvecs[0])
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, d)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - imgp) ** 2, axis=1))))
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = np.ravel(tvec)
    return BoardView(T, np.ravel(ch_ids).astype(int), imgp, obj, rms)


# ==== solving =================================================================================


def _rt(T: np.ndarray) -> np.ndarray:
    return np.concatenate([Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]])


def _T(x: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(x[:3]).as_matrix()
    out[:3, 3] = x[3:6]
    return out


def mean_transform(transforms: Sequence[np.ndarray]) -> np.ndarray:
    """Average of rigid transforms (rotation: scipy's chordal mean; translation: mean)."""
    out = np.eye(4)
    out[:3, :3] = Rotation.from_matrix(np.stack([t[:3, :3] for t in transforms])).mean().as_matrix()
    out[:3, 3] = np.mean([t[:3, 3] for t in transforms], axis=0)
    return out


def spread(transforms: Sequence[np.ndarray]) -> tuple[float, float]:
    """RMS distance (mm) and RMS angle (deg) of transforms from their mean."""
    m = mean_transform(transforms)
    d = [np.linalg.norm(t[:3, 3] - m[:3, 3]) for t in transforms]
    a = [rotation_angle_deg(t, m) for t in transforms]
    return float(1000.0 * np.sqrt(np.mean(np.square(d)))), float(np.sqrt(np.mean(np.square(a))))


def pose_error(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(translation error mm, rotation error deg) of a 4x4 estimate."""
    return float(1000.0 * np.linalg.norm(estimate[:3, 3] - truth[:3, 3])), rotation_angle_deg(estimate, truth)


@dataclass
class HandEyeResult:
    """A calibrated camera: ``T_base_cam`` and how well the views agree with it.

    ``spread_mm`` / ``spread_deg``: RMS scatter across views of what should be constant (the
    board on the gripper for eye-to-hand, the camera for a known board); ``reprojection_px``: RMS
    reprojection error of every detected corner through the calibrated chain (``per_view_px``
    per view)."""

    T_base_cam: np.ndarray
    T_gripper_board: np.ndarray | None
    views: int
    method: str
    spread_mm: float
    spread_deg: float
    reprojection_px: float
    per_view_px: list[float]
    T_base_cam_closed_form: np.ndarray

    def summary(self) -> str:
        return (
            f"{self.views} views, {self.method}: board-consistency spread {self.spread_mm:.2f} mm / "
            f"{self.spread_deg:.3f} deg, reprojection RMS {self.reprojection_px:.3f} px"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "T_base_cam": self.T_base_cam.tolist(),
            "T_gripper_board": None if self.T_gripper_board is None else self.T_gripper_board.tolist(),
            "T_base_cam_closed_form": self.T_base_cam_closed_form.tolist(),
            "views": self.views,
            "method": self.method,
            "spread_mm": self.spread_mm,
            "spread_deg": self.spread_deg,
            "reprojection_px": self.reprojection_px,
            "per_view_px": self.per_view_px,
        }


def _reprojection(
    K: np.ndarray, dist: np.ndarray, views: Sequence[BoardView], T_cam_boards: Sequence[np.ndarray]
) -> list[np.ndarray]:
    import cv2

    out = []
    for v, T in zip(views, T_cam_boards, strict=True):
        rvec = cv2.Rodrigues(T[:3, :3])[0]
        proj, _ = cv2.projectPoints(v.object_points, rvec, T[:3, 3], K, dist)
        out.append((proj.reshape(-1, 2) - v.image_points).reshape(-1))
    return out


def _rms(residuals: Sequence[np.ndarray]) -> tuple[float, list[float]]:
    """RMS reprojection error (px per corner) over all views, and per view."""
    sq = [np.sum(r.reshape(-1, 2) ** 2, axis=1) for r in residuals]
    return float(np.sqrt(np.mean(np.concatenate(sq)))), [float(np.sqrt(np.mean(s))) for s in sq]


def _refined_result(
    T_base_x: Sequence[np.ndarray],
    views: Sequence[BoardView] | Sequence[np.ndarray],
    T_bc0: np.ndarray,
    T_xb: np.ndarray | None,
    K: np.ndarray | None,
    dist: np.ndarray | None,
    refine: bool,
    method: str,
    spread_of: Callable[[np.ndarray], list[np.ndarray]],
) -> HandEyeResult:
    """The tail both solvers share. The board is at ``T_base_x[i] @ T_xb`` in view i (``x`` =
    the gripper with the board mount ``T_xb`` unknown, or the board itself: ``T_xb`` None).
    With ``K`` and BoardViews, ``T_base_cam`` (and the mount) are refined from the closed form
    ``T_bc0`` on the corners' reprojection error (scipy least squares, Huber loss at 1 px);
    then the spread of ``spread_of(T_base_cam)`` and the RMS reprojection error."""
    board_views = [v for v in views if isinstance(v, BoardView)]
    can_refine = K is not None and len(board_views) == len(T_base_x)
    d = np.zeros(5) if dist is None else np.asarray(dist, float)
    T_bc, mount = T_bc0, (np.eye(4) if T_xb is None else T_xb)
    if can_refine and refine:

        def fun(x: np.ndarray) -> np.ndarray:
            cam_base = invert(_T(x[:6]))
            m = mount if T_xb is None else _T(x[6:])
            return np.concatenate(_reprojection(K, d, board_views, [cam_base @ b @ m for b in T_base_x]))

        x0 = _rt(T_bc) if T_xb is None else np.concatenate([_rt(T_bc), _rt(mount)])
        sol = least_squares(fun, x0, loss="huber", f_scale=1.0, x_scale="jac")
        T_bc = _T(sol.x[:6])
        if T_xb is not None:
            mount = _T(sol.x[6:])
    spread_mm, spread_deg = spread(spread_of(T_bc))
    rms, per = (float("nan"), [])
    if can_refine:
        rms, per = _rms(_reprojection(K, d, board_views, [invert(T_bc) @ b @ mount for b in T_base_x]))
    return HandEyeResult(
        T_base_cam=T_bc,
        T_gripper_board=None if T_xb is None else mount,
        views=len(T_base_x),
        method=method + (" + refined" if can_refine and refine else ""),
        spread_mm=spread_mm,
        spread_deg=spread_deg,
        reprojection_px=rms,
        per_view_px=per,
        T_base_cam_closed_form=T_bc0,
    )


def calibrate_eye_to_hand(
    T_base_gripper: Sequence[np.ndarray],
    views: Sequence[BoardView] | Sequence[np.ndarray],
    method: str = "park",
    K: np.ndarray | None = None,
    dist: np.ndarray | None = None,
    refine: bool = True,
) -> HandEyeResult:
    """Camera fixed in the cell, board on the gripper: ``T_base_cam`` from >= 3 views.

    ``views``: :class:`BoardView` (or bare 4x4 ``T_cam_board``). ``cv2.calibrateHandEye`` gets
    the inverse robot poses (base in gripper) and the board poses; what it calls
    ``cam2gripper`` is then ``T_base_cam``. With ``K`` and BoardViews, the camera and the board
    mount are refined together on the corners' reprojection error (scipy least squares,
    Huber loss at 1 px). The spread is the board mount's across views."""
    import cv2

    if method not in METHODS:
        raise CalibrationError(f"hand-eye method {method!r}: use one of {', '.join(METHODS)}")
    bg = [np.asarray(t, float) for t in T_base_gripper]
    cb = [v.T_cam_board if isinstance(v, BoardView) else np.asarray(v, float) for v in views]
    if len(bg) != len(cb):
        raise CalibrationError(f"{len(bg)} robot poses but {len(cb)} board views")
    if len(bg) < 3:
        raise CalibrationError(f"hand-eye calibration needs at least 3 views with the board, got {len(bg)}")
    gb = [invert(t) for t in bg]  # base in gripper
    R, t = cv2.calibrateHandEye(
        [g[:3, :3] for g in gb],
        [g[:3, 3] for g in gb],
        [c[:3, :3] for c in cb],
        [c[:3, 3] for c in cb],
        method=getattr(cv2, f"CALIB_HAND_EYE_{method.upper()}"),
    )
    T_bc0 = np.eye(4)
    T_bc0[:3, :3] = R
    T_bc0[:3, 3] = np.ravel(t)

    def mounts(T_bc: np.ndarray) -> list[np.ndarray]:
        return [invert(b) @ T_bc @ c for b, c in zip(bg, cb, strict=True)]

    T_gb = mean_transform(mounts(T_bc0))
    return _refined_result(bg, views, T_bc0, T_gb, K, dist, refine, method, mounts)


def calibrate_known_board(
    T_base_board: Sequence[np.ndarray],
    views: Sequence[BoardView] | Sequence[np.ndarray],
    K: np.ndarray | None = None,
    dist: np.ndarray | None = None,
    refine: bool = True,
) -> HandEyeResult:
    """The board at a known place in each view (fixed in the scene, or on the hand at a known
    mount: ``T_base_gripper @ T_gripper_board``): each view gives ``T_base_cam = T_base_board @
    inv(T_cam_board)``; they are averaged, then refined on the corners' reprojection error (with
    ``K`` and BoardViews). One view is enough; more average the detection noise. The spread is
    the per-view camera poses'."""
    bb = [np.asarray(t, float) for t in T_base_board]
    cb = [v.T_cam_board if isinstance(v, BoardView) else np.asarray(v, float) for v in views]
    if len(bb) != len(cb) or not bb:
        raise CalibrationError(f"{len(bb)} board poses but {len(cb)} board views (at least one of each needed)")
    per_view = [b @ invert(c) for b, c in zip(bb, cb, strict=True)]
    return _refined_result(
        bb, views, mean_transform(per_view), None, K, dist, refine, "known board", lambda _T_bc: per_view
    )


# ==== the camera in the scene =================================================================


def camera_cfg_from_pose(
    cam: CameraCfg,
    T_world_cam: np.ndarray,
    K: np.ndarray | None = None,
    width: int | None = None,
    height: int | None = None,
) -> CameraCfg:
    """``cam`` moved to the optical frame ``T_world_cam`` (pos, a target along the optical axis
    at the camera's previous look distance, up = minus the optical y axis). With ``K`` (OpenCV,
    for a ``width`` x ``height`` image) the intrinsics are set too, at ``cam``'s own size.
    Inverse of :meth:`PinholeCamera.from_camera_cfg`."""
    T = np.asarray(T_world_cam, float)
    pos = T[:3, 3]
    dist = float(np.linalg.norm(np.subtract(cam.target, cam.pos))) or 1.0
    target = pos + T[:3, 2] * dist
    up = -T[:3, 1]
    out = CameraCfg(
        name=cam.name,
        pos=tuple(float(v) for v in pos),
        target=tuple(float(v) for v in target),
        up=tuple(float(v) for v in up),
        width=cam.width,
        height=cam.height,
        fx=cam.fx,
        fy=cam.fy,
        cx=cam.cx,
        cy=cam.cy,
    )
    if K is not None:
        k = np.asarray(K, float)
        sx, sy = cam.width / float(width or cam.width), cam.height / float(height or cam.height)
        out.fx, out.fy = float(k[0, 0] * sx), float(k[1, 1] * sy)
        out.cx, out.cy = float((k[0, 2] + 0.5) * sx), float((k[1, 2] + 0.5) * sy)  # MuJoCo: centres at +0.5
    return out


def scene_with_camera(
    scene: SceneCfg,
    camera: str,
    T_base_cam: np.ndarray,
    K: np.ndarray | None = None,
    width: int | None = None,
    height: int | None = None,
) -> SceneCfg:
    """A copy of ``scene`` with camera ``camera`` at ``T_base_cam`` (robot base frame)."""
    out = scene.copy()
    cam = out.camera(camera)
    T_world_cam = invert(base_from_world(scene)) @ np.asarray(T_base_cam, float)
    new = camera_cfg_from_pose(cam, T_world_cam, K, width, height)
    out.cameras = [new if c.name == camera else c for c in out.cameras]
    return out


def write_calibration(
    out: str | Path,
    scene: SceneCfg,
    camera: str,
    result: HandEyeResult,
    K: np.ndarray | None = None,
    width: int | None = None,
    height: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``<out>/calibrated_scene.usda`` (the scene with the calibrated camera, as ``twinrank
    calibrate --cameras`` writes it) and ``<out>/camera_calibration.yaml`` (the camera's pose in
    the base and world frames, its CameraCfg, the residuals and ``extra``)."""
    import yaml

    from twin.usd_io import write_scene_usd

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    new_scene = scene_with_camera(scene, camera, result.T_base_cam, K, width, height)
    usd = write_scene_usd(new_scene, folder / "calibrated_scene.usda")
    cam = new_scene.camera(camera)
    pos, quat = matrix_pose(result.T_base_cam)
    T_world_cam = invert(base_from_world(scene)) @ result.T_base_cam
    wpos, wquat = matrix_pose(T_world_cam)
    data = {
        "camera": camera,
        "frame": "robot base (T_base_cam: optical frame, OpenCV axes x right, y down, z forward)",
        "T_base_cam": [[round(float(v), 9) for v in row] for row in result.T_base_cam],
        "base": {"pos": [float(v) for v in pos], "quat_wxyz": [float(v) for v in quat]},
        "world": {"pos": [float(v) for v in wpos], "quat_wxyz": [float(v) for v in wquat]},
        "camera_cfg": {
            "pos": list(cam.pos),
            "target": list(cam.target),
            "up": list(cam.up),
            "width": cam.width,
            "height": cam.height,
            "fx": cam.fx,
            "fy": cam.fy,
            "cx": cam.cx,
            "cy": cam.cy,
        },
        "residual": {
            "method": result.method,
            "views": result.views,
            "spread_mm": result.spread_mm,
            "spread_deg": result.spread_deg,
            "reprojection_px": result.reprojection_px,
            "per_view_px": result.per_view_px,
        },
        "T_gripper_board": None
        if result.T_gripper_board is None
        else [[round(float(v), 9) for v in row] for row in result.T_gripper_board],
        **(extra or {}),
    }
    report = folder / "camera_calibration.yaml"
    report.write_text(
        yaml.safe_dump(json.loads(json.dumps(data, default=float)), sort_keys=False, default_flow_style=None)
    )
    return {"scene": usd, "report": report}


# ==== poses ===================================================================================


class TwinArm:
    """The twin's kinematics (and a collision/occlusion check) for a scene with the board."""

    def __init__(self, scene: SceneCfg, board: CharucoBoardSpec | None = None) -> None:
        from twin.compile import compile_scene

        self.board = board or CharucoBoardSpec()
        self.scene = scene_with_board(scene, self.board, collide=True)
        self.model = compile_scene(self.scene).model
        self.data = mujoco.MjData(self.model)
        self.h = RobotHandles.from_model(self.model)
        self.T_base_world = base_from_world(scene)
        self.T_world_base = invert(self.T_base_world)
        self.board_id = self.model.body(BOARD_BODY).id
        self.T_hand_board = hand_board_transform(self.board)
        self.home = np.asarray(scene.robot.home_qpos, float)
        m = self.model
        robot_bodies = {i for i in range(m.nbody) if m.body(i).name.startswith("panda_")}
        self._robot_geoms = {g for g in range(m.ngeom) if m.geom_bodyid[g] in robot_bodies}
        self._board_geoms = {g for g in range(m.ngeom) if m.geom_bodyid[g] == self.board_id}
        self._grip_geoms = {
            g
            for g in range(m.ngeom)
            if m.body(int(m.geom_bodyid[g])).name in (HAND_BODY, "panda_leftfinger", "panda_rightfinger")
        }
        self.lower = np.maximum(self.h.lower, FR3_Q_MIN)
        self.upper = np.minimum(self.h.upper, FR3_Q_MAX)
        site = m.site(TCP_SITE).id
        self._set(self.home)
        hand = self.T_world_body(m.body(HAND_BODY).id)
        tcp = np.eye(4)
        tcp[:3, :3] = self.data.site_xmat[site].reshape(3, 3)
        tcp[:3, 3] = self.data.site_xpos[site]
        self.T_hand_tcp = invert(hand) @ tcp
        self.ik = PandaIK(m, self.h)
        self.ik.rest = self.home.copy()

    def _set(self, q: np.ndarray) -> None:
        self.data.qpos[self.h.qpos_adr] = np.asarray(q, float)[:7]
        self.data.qpos[self.h.finger_qpos_adr] = 0.04  # open: clear of the plate's tab
        mujoco.mj_kinematics(self.model, self.data)

    def T_world_body(self, body: int) -> np.ndarray:
        return pose_matrix(self.data.xpos[body], self.data.xquat[body])

    def T_base_hand(self, q: np.ndarray) -> np.ndarray:
        """The twin's ``panda_hand`` in the robot base frame at arm joints ``q``."""
        self._set(q)
        return self.T_base_world @ self.T_world_body(self.model.body(HAND_BODY).id)

    def T_base_board(self, q: np.ndarray) -> np.ndarray:
        return self.T_base_hand(q) @ self.T_hand_board

    def in_limits(self, q: np.ndarray, margin: float = 0.05) -> bool:
        return bool(np.all(q >= self.lower + margin) and np.all(q <= self.upper - margin))

    def collides(self, q: np.ndarray) -> bool:
        """Robot or board touching the scene, or the board touching an arm link."""
        self._set(q)
        mujoco.mj_forward(self.model, self.data)
        for c in self.data.contact[: self.data.ncon]:
            if c.dist > -1e-4:
                continue
            pair = {int(c.geom1), int(c.geom2)}
            robot = pair & (self._robot_geoms | self._board_geoms)
            if not robot:
                continue
            if len(robot) == 1:
                return True  # with the scene
            if pair & self._board_geoms and not pair & self._grip_geoms:
                return True  # board against an arm link
        return False

    def path_collides(self, q0: np.ndarray, q1: np.ndarray, step: float = 0.05) -> bool:
        """Whether the straight joint-space path q0 -> q1 (what a JointMotion follows) collides."""
        n = max(2, int(np.ceil(np.max(np.abs(np.subtract(q1, q0))) / step)) + 1)
        return any(self.collides(q0 + s * (np.subtract(q1, q0))) for s in np.linspace(0.0, 1.0, n))

    def occluded(self, cam: PinholeCamera, points_base: np.ndarray) -> bool:
        """Whether anything but the board lies between the camera and any of the points."""
        origin = self.T_world_base @ cam.T_base_cam
        geomid = np.zeros(1, np.int32)
        for p in points_base:
            pw = self.T_world_base[:3, :3] @ p + self.T_world_base[:3, 3]
            vec = pw - origin[:3, 3]
            dist = float(np.linalg.norm(vec))
            hit = mujoco.mj_ray(self.model, self.data, origin[:3, 3], vec / dist, None, 1, self.board_id, geomid)
            if 0 <= hit < dist - 0.01:
                return True
        return False

    def solve(self, T_base_board: np.ndarray, seeds: Sequence[np.ndarray]) -> np.ndarray | None:
        """Joints putting the board at ``T_base_board`` (within 5 mm / 2 deg), or None."""
        T_world_tcp = self.T_world_base @ T_base_board @ invert(self.T_hand_board) @ self.T_hand_tcp
        for seed in seeds:
            q = self.ik.solve(T_world_tcp[:3, 3], T_world_tcp[:3, :3], np.asarray(seed, float), iters=300, tol=1e-5)
            got = self.T_base_board(q)
            if np.linalg.norm(got[:3, 3] - T_base_board[:3, 3]) < 0.005 and rotation_angle_deg(got, T_base_board) < 2:
                return q
        return None


def view_problem(arm: TwinArm, cam: PinholeCamera, q: np.ndarray, margin_px: float = 25.0) -> str:
    """'' when the board is fully in view of ``cam`` at joints ``q`` (inside the image by
    ``margin_px``, facing the camera within 55 deg, not occluded) and the pose is safe (FR3
    limits, no contact in the twin); else why not."""
    if not arm.in_limits(q):
        return "joint limits"
    T = arm.T_base_board(q)
    outline = arm.board.outline() @ T[:3, :3].T + T[:3, 3]
    uv, z = cam.project(outline)
    if np.any(z < 0.2):
        return "board behind the camera"
    if np.any(uv < margin_px) or np.any(uv[:, 0] > cam.width - margin_px) or np.any(uv[:, 1] > cam.height - margin_px):
        return "board not inside the image"
    centre = T[:3, :3] @ np.array([arm.board.width / 2, arm.board.height / 2, 0.0]) + T[:3, 3]
    to_cam = cam.T_base_cam[:3, 3] - centre
    facing = float(-T[:3, 2] @ to_cam / np.linalg.norm(to_cam))  # board z points into the board
    if facing < math.cos(math.radians(55.0)):
        return "board not facing the camera"
    if arm.collides(q):
        return "contact in the twin"
    grid = np.array([[u, v, 0.0] for u in (0.1, 0.5, 0.9) for v in (0.1, 0.5, 0.9)])
    grid[:, 0] *= arm.board.width
    grid[:, 1] *= arm.board.height
    if arm.occluded(cam, grid @ T[:3, :3].T + T[:3, 3]):
        return "board occluded"
    return ""


def calibration_poses(
    scene: SceneCfg,
    camera: str,
    n: int = 12,
    seed: int = 0,
    board: CharucoBoardSpec | None = None,
    start: np.ndarray | None = None,
    distance: tuple[float, float] = (0.45, 0.75),
    tilt_deg: tuple[float, float] = (12.0, 35.0),
    candidates: int = 400,
) -> list[np.ndarray]:
    """Up to ``n`` (<= 15) arm joint configurations that show the board held by the gripper to
    ``camera`` (as the scene places it) from diverse orientations, ordered for short moves from
    ``start`` (default: home), each move collision-free in the twin.

    Candidates: the board centre on a ray through the central part of the image at
    ``distance`` m from the camera, facing the camera, tilted ``tilt_deg`` about a random
    in-plane axis and rolled up to 40 deg about its normal; solved by the twin's IK; kept when
    :func:`view_problem` finds nothing. The selection is greedy farthest-point in board
    orientation (hand-eye calibration needs rotations about non-parallel axes)."""
    if not 3 <= n <= 15:
        raise CalibrationError(f"poses = {n}: use 3 to 15 board poses")
    board = board or CharucoBoardSpec()
    arm = TwinArm(scene, board)
    cam = PinholeCamera.from_scene(scene, camera)
    rng = np.random.default_rng(seed)
    start_q = arm.home if start is None else np.asarray(start, float)
    found: list[tuple[np.ndarray, np.ndarray]] = []  # (q, T_base_board)
    K_inv = np.linalg.inv(cam.K)
    centre_board = np.array([board.width / 2, board.height / 2, 0.0])
    world_up = arm.T_base_world[:3, :3] @ np.array([0.0, 0.0, 1.0])
    for _ in range(candidates):
        if len(found) >= 4 * n:
            break
        u = rng.uniform(0.3, 0.7) * cam.width
        v = rng.uniform(0.3, 0.7) * cam.height
        ray = cam.T_base_cam[:3, :3] @ (K_inv @ np.array([u, v, 1.0]))
        ray /= np.linalg.norm(ray)
        centre = cam.T_base_cam[:3, 3] + ray * rng.uniform(*distance)
        z = ray  # board z (into the board) along the viewing ray: the print faces the camera
        y = -world_up + (world_up @ z) * z  # board rows downwards
        y /= np.linalg.norm(y)
        R0 = np.stack([np.cross(y, z), y, z], axis=1)
        axis_in_plane = rng.uniform(0, 2 * np.pi)
        tilt = math.radians(rng.uniform(*tilt_deg))
        tilt_axis = R0 @ np.array([math.cos(axis_in_plane), math.sin(axis_in_plane), 0.0])
        roll = math.radians(rng.uniform(-40.0, 40.0))
        R = Rotation.from_rotvec(tilt * tilt_axis).as_matrix() @ R0 @ Rotation.from_rotvec([0, 0, roll]).as_matrix()
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = centre - R @ centre_board
        q = arm.solve(T, [arm.home, start_q, *(f[0] for f in found[-2:])])
        if q is None or view_problem(arm, cam, q):
            continue
        found.append((q, arm.T_base_board(q)))
    if len(found) < 3:
        raise CalibrationError(
            f"camera {camera!r}: found {len(found)} robot poses that show it the board (3 needed); is the "
            "camera looking at the robot's workspace?"
        )
    # greedy farthest-point selection in board orientation, from the least tilted
    chosen = [0]
    while len(chosen) < min(n, len(found)):
        best, best_d = -1, -1.0
        for i, (_, T) in enumerate(found):
            if i in chosen:
                continue
            d = min(rotation_angle_deg(T, found[j][1]) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    # order: nearest neighbour in joint space from start; each move must be clear in the twin
    left = [found[i][0] for i in chosen]
    order: list[np.ndarray] = []
    q_prev = start_q
    while left:
        left.sort(key=lambda q: float(np.max(np.abs(q - q_prev))))
        pick = next((q for q in left if not arm.path_collides(q_prev, q)), None)
        if pick is None:
            break
        left = [q for q in left if q is not pick]
        order.append(pick)
        q_prev = pick
    if len(order) < 3:
        raise CalibrationError(f"camera {camera!r}: no collision-free sequence of board poses from the start posture")
    return order


# ==== the run against a robot and a camera ====================================================


@dataclass
class ColourFrame:
    rgb: np.ndarray  # (H, W, 3) uint8
    K: np.ndarray  # 3x3 OpenCV
    dist: np.ndarray  # (5,) OpenCV distortion (k1, k2, p1, p2, k3)
    timestamp_ms: float


class RealSenseGrabber:
    """Colour frames (and intrinsics) of one RealSense through ``rs.pipeline``: a real device
    (``context`` = ``rs.context``) or a software one (``FakeRealSenseHub.context``)."""

    def __init__(
        self,
        serial: str | None = None,
        context: Callable[[], Any] | None = None,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        timeout_s: float = 5.0,
    ) -> None:
        from twin.live.fake_hardware import import_pyrealsense2

        rs = import_pyrealsense2()
        self.rs = rs
        ctx = context() if context is not None else rs.context()
        serials = [d.get_info(rs.camera_info.serial_number) for d in ctx.query_devices()]
        if not serials:
            raise CalibrationError("no RealSense camera connected")
        if serial is not None and serial not in serials:
            raise CalibrationError(f"RealSense {serial} not found (connected: {serials})")
        self.serial = serial or serials[0]
        cfg = rs.config()
        cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)
        cfg.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        self.pipe = rs.pipeline(ctx)
        try:
            profile = self.pipe.start(cfg)
        except RuntimeError as exc:
            raise CalibrationError(f"RealSense {self.serial}: cannot start {width}x{height}@{fps}: {exc}") from exc
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        self.width, self.height = int(intr.width), int(intr.height)
        self.K = np.array([[intr.fx, 0.0, intr.ppx], [0.0, intr.fy, intr.ppy], [0.0, 0.0, 1.0]])
        coeffs = np.asarray(list(intr.coeffs)[:5], float)
        if intr.model not in (rs.distortion.brown_conrady, rs.distortion.none) and np.any(coeffs):
            log.warning("RealSense %s: distortion model %s used as OpenCV's plumb bob", self.serial, intr.model)
        self.dist = coeffs
        self.timeout_ms = int(1000 * timeout_s)

    def grab(self, after: float, skip: int = 1) -> ColourFrame:
        """A colour frame exposed after wall time ``after`` (s): frames stamped in system or
        global time must be newer than ``after``, and ``skip`` further frames are dropped (a
        frame stamped after ``after`` may have started before it: a twin render, an exposure)."""
        rs = self.rs
        deadline = time.monotonic() + self.timeout_ms / 1000.0 * 4
        fresh = 0
        while time.monotonic() < deadline:
            try:
                frames = self.pipe.wait_for_frames(self.timeout_ms)
            except RuntimeError as exc:
                raise CalibrationError(f"RealSense {self.serial}: no frames ({exc})") from exc
            color = frames.get_color_frame()
            if not color:
                continue
            stamp = float(color.get_timestamp())
            domain = color.get_frame_timestamp_domain()
            host_clock = domain in (rs.timestamp_domain.system_time, rs.timestamp_domain.global_time)
            if host_clock and stamp < after * 1000.0:
                continue
            fresh += 1
            if fresh <= (skip if host_clock else skip + 5):  # device clock: drop what may be queued
                continue
            rgb = np.asanyarray(color.get_data()).copy()
            return ColourFrame(rgb, self.K.copy(), self.dist.copy(), stamp)
        raise CalibrationError(f"RealSense {self.serial}: no new frame within {4 * self.timeout_ms / 1000:.0f} s")

    def close(self) -> None:
        try:
            self.pipe.stop()
        except Exception:
            pass


class FrankaArm:
    """The arm through franky, for slow point-to-point joint moves: connect (with a timeout:
    libfranka has none), move, read the measured joints and ``O_T_EE``."""

    def __init__(self, ip: str, dynamics: float = 0.15, connect_timeout_s: float = 10.0) -> None:
        import franky

        from twin.live.franka_bridge import realtime_kernel

        if not 0.0 < dynamics <= 0.5:
            raise CalibrationError(f"dynamics factor {dynamics}: use a value in (0, 0.5] (slow, safe moves)")
        self.franky = franky
        self.ip = ip
        result: dict[str, Any] = {}
        rt = franky.RealtimeConfig.Enforce if realtime_kernel() else franky.RealtimeConfig.Ignore

        def connect() -> None:
            try:
                robot = franky.Robot(ip, realtime_config=rt)
                robot.relative_dynamics_factor = franky.RelativeDynamicsFactor(dynamics, dynamics, dynamics)
                if robot.has_errors:
                    robot.recover_from_errors()
                result["robot"] = robot
            except Exception as exc:  # NetworkException, IncompatibleVersionException, ...
                result["error"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=connect, name="franky-connect", daemon=True)
        t.start()
        t.join(connect_timeout_s)
        if t.is_alive():
            raise CalibrationError(f"robot {ip} did not answer within {connect_timeout_s:.0f} s (is FCI enabled?)")
        if "robot" not in result:
            raise CalibrationError(f"cannot connect to the robot at {ip}: {result.get('error', 'unknown error')}")
        self.robot = result["robot"]

    def q(self) -> np.ndarray:
        return np.asarray(self.robot.current_joint_state.position, float)

    def O_T_EE(self) -> np.ndarray:
        return np.asarray(self.robot.state.O_T_EE.matrix, float)

    def move_to(self, q: np.ndarray) -> None:
        """A jerk-limited joint motion to ``q`` (blocking). A ``communication_constraints_violation``
        reflex (this host missed control cycles: a timing problem, not a contact) is recovered
        and the motion retried (up to ``TIMING_RETRIES`` times); any other reflex stops the
        calibration with its reason."""
        franky = self.franky
        for attempt in range(TIMING_RETRIES + 1):
            try:
                self.robot.move(franky.JointMotion(franky.JointState(list(map(float, q)))))
                return
            except franky.ControlException as exc:
                timing = "communication_constraints_violation" in str(exc)
                if attempt == TIMING_RETRIES or not timing:
                    raise CalibrationError(f"robot motion stopped by a reflex: {exc}") from exc
                log.warning("robot motion aborted (%s); recovering and retrying", exc)
                self.robot.recover_from_errors()
            except franky.NetworkException as exc:
                raise CalibrationError(f"lost the connection to the robot at {self.ip}: {exc}") from exc


@dataclass
class ViewRecord:
    """One robot pose of a run."""

    index: int
    q: np.ndarray
    T_base_gripper: np.ndarray
    O_T_EE: np.ndarray | None
    view: BoardView | None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "q": [float(v) for v in self.q],
            "corners": 0 if self.view is None else self.view.corners,
            "pnp_rms_px": None if self.view is None else self.view.reprojection_px,
            "problem": self.problem,
            "T_base_gripper": self.T_base_gripper.tolist(),
            "O_T_EE": None if self.O_T_EE is None else self.O_T_EE.tolist(),
            "T_cam_board": None if self.view is None else self.view.T_cam_board.tolist(),
        }


def collect_views(
    arm: FrankaArm,
    grabber: RealSenseGrabber,
    poses: Sequence[np.ndarray],
    twin: TwinArm,
    settled: Callable[[np.ndarray], None] | None = None,
    progress: Callable[[str], None] | None = None,
    settle_s: float = 0.3,
    moving: Callable[[], None] | None = None,
) -> tuple[list[ViewRecord], ColourFrame | None]:
    """Move through ``poses``; at each, read the measured joints (``settled(q)`` is told them,
    e.g. a twin camera's joint source; ``moving()`` before each move), grab a colour frame
    exposed after the robot stopped and detect the board. Returns the records and the last frame."""
    say = progress or (lambda s: None)
    q_prev = arm.q()
    if twin.path_collides(q_prev, np.asarray(poses[0], float)):
        raise CalibrationError(
            "the move from the robot's current posture to the first board pose collides in the twin; "
            "move the robot nearer its home posture first"
        )
    records: list[ViewRecord] = []
    frame = None
    for i, target in enumerate(poses):
        t0 = time.monotonic()
        if moving is not None:
            moving()
        arm.move_to(target)
        time.sleep(settle_s)
        q = arm.q()
        if settled is not None:
            settled(q)
        t_still = time.time()
        frame = grabber.grab(after=t_still)
        T_bg = twin.T_base_hand(q)
        try:
            view = detect_board(frame.rgb, frame.K, twin.board, frame.dist)
            rec = ViewRecord(i, q, T_bg, arm.O_T_EE(), view)
            msg = f"{view.corners} corners, PnP RMS {view.reprojection_px:.2f} px"
        except BoardNotDetected as exc:
            rec = ViewRecord(i, q, T_bg, arm.O_T_EE(), None, str(exc))
            msg = f"board not used: {exc}"
        records.append(rec)
        say(f"pose {i + 1}/{len(poses)}: {msg} ({time.monotonic() - t0:.1f} s)")
    return records, frame


def solve_records(
    records: Sequence[ViewRecord],
    K: np.ndarray,
    dist: np.ndarray | None = None,
    method: str = "park",
    known_mount: np.ndarray | None = None,
) -> HandEyeResult:
    """Hand-eye (or known mount ``T_gripper_board``) calibration from the records with a board."""
    used = [r for r in records if r.view is not None]
    if not used:
        raise CalibrationError(
            f"the board was detected in none of the {len(records)} views; check that the board is on the hand "
            "as specified and that the camera sees the robot's workspace"
        )
    views = [r.view for r in used]
    if known_mount is not None:
        return calibrate_known_board([r.T_base_gripper @ known_mount for r in used], views, K, dist)
    return calibrate_eye_to_hand([r.T_base_gripper for r in used], views, method, K, dist)


@dataclass
class CameraCalibrationReport:
    """What :func:`calibrate_camera` did: the result, the views, the files, and (fake hardware)
    the error against the camera pose the twin rendered with."""

    camera: str
    result: HandEyeResult
    records: list[ViewRecord]
    files: dict[str, Path]
    K: np.ndarray
    true_error: tuple[float, float] | None = None  # (mm, deg)
    #: spread (mm, deg) across poses of franky's O_T_EE in the twin's hand frame: 0 when the robot's
    #: kinematics (with its configured end effector) and the twin's agree up to a constant offset
    kinematics_spread: tuple[float, float] | None = None
    start_error: tuple[float, float] | None = None  # the scene's camera before calibration vs truth
    lines: list[str] = field(default_factory=list)


def calibrate_camera(
    scene: SceneCfg,
    camera: str,
    out: str | Path,
    *,
    task: str = "reach",
    robot_ip: str = "127.0.0.1",
    fake_hardware: bool = False,
    poses: int = 12,
    seed: int = 0,
    method: str = "park",
    known_mount: bool = False,
    board: CharucoBoardSpec | None = None,
    serial: str | None = None,
    width: int = 640,
    height: int = 480,
    dynamics: float = 0.15,
    progress: Callable[[str], None] | None = None,
    truth_scene: SceneCfg | None = None,
) -> CameraCalibrationReport:
    """Calibrate ``camera`` of ``scene`` against a robot: plan board poses in the twin, move the
    robot through them (franky, ``dynamics`` x the FR3 velocity/acceleration/jerk limits), grab
    a colour frame per pose (pyrealsense2), solve (hand-eye, or the known mount with
    ``known_mount``), write ``calibrated_scene.usda`` + ``camera_calibration.yaml`` to ``out``.

    ``fake_hardware``: franka-sim is started on 127.0.0.1 (tied to this process) and the camera
    is a software RealSense fed with twin renders of ``truth_scene`` (default: the task's scene)
    with the board on the hand, posed at the robot's measured joints; the report then has the
    error against that scene's camera. ``scene`` is the twin being calibrated: its camera pose
    is only the starting guess used to plan the poses."""
    from twin.live import fake_hardware as fh

    say = progress or (lambda s: None)
    board = board or CharucoBoardSpec()
    scene.camera(camera)  # SceneError naming the cameras
    if not 3 <= poses <= 15:
        raise CalibrationError(f"poses = {poses}: use 3 to 15 board poses")
    if method not in METHODS:
        raise CalibrationError(f"hand-eye method {method!r}: use one of {', '.join(METHODS)}")
    sim = hub = grabber = source = None
    truth = None
    try:
        twin = TwinArm(scene, board)
        if fake_hardware:
            from twin.tasks import make_task

            task_cfg = make_task(task).cfg
            truth_scene = truth_scene if truth_scene is not None else task_cfg.scene
            truth_scene.camera(camera)
            truth = PinholeCamera.from_scene(truth_scene, camera, width, height).T_base_cam
            why = fh.franka_sim_missing()
            if why:
                raise CalibrationError(f"fake hardware: {why}")
            if fh.tcp_listening("127.0.0.1", fh.ARM_PORT):
                raise CalibrationError("fake hardware: " + fh.port_in_use_message("127.0.0.1", fh.ARM_PORT))
            say("starting franka-sim on 127.0.0.1")
            try:
                sim = fh.FrankaSim("127.0.0.1").start()
            except fh.FakeHardwareError as exc:
                raise CalibrationError(f"fake hardware: {exc}") from exc
            robot_ip = "127.0.0.1"
        say(f"connecting to the robot at {robot_ip}")
        arm = FrankaArm(robot_ip, dynamics=dynamics)
        q_now = arm.q()
        settled: Callable[[np.ndarray], None] | None = None
        moving: Callable[[], None] | None = None
        if fake_hardware:
            # the twin renders the camera only while the robot stands still: rendering next to
            # franky's 1 kHz loop on a busy host costs control cycles (reflexes)
            held: dict[str, Any] = {"q": q_now, "active": True}
            source = fh.TwinCameraSource(
                task,
                camera,
                width,
                height,
                joints=lambda: held["q"],
                cfg=task_cfg.replace(scene=scene_with_board(truth_scene, board)),
            )
            hub = fh.FakeRealSenseHub()
            dev = hub.add(fh.SoftwareRealSense("000000000042", intrinsics=source.intrinsics))
            hub.feeders[dev.serial] = fh.FrameFeeder(dev, source, 10.0, active=lambda: held["active"]).start()
            grabber = RealSenseGrabber(dev.serial, hub.context, width, height)

            def settled(q: np.ndarray) -> None:
                held.update(q=q, active=True)

            def moving() -> None:
                held["active"] = False

        else:
            grabber = RealSenseGrabber(serial, None, width, height)
        say(f"camera {camera}: RealSense {grabber.serial}, {grabber.width}x{grabber.height}, fx {grabber.K[0, 0]:.1f}")
        say(f"planning {poses} board poses in the twin")
        plan = calibration_poses(scene, camera, poses, seed, board, start=q_now)
        records, _ = collect_views(arm, grabber, plan, twin, settled, say, moving=moving)
        mount = twin.T_hand_board if known_mount else None
        result = solve_records(records, grabber.K, grabber.dist, method, mount)
        extra: dict[str, Any] = {
            "robot_ip": robot_ip,
            "fake_hardware": fake_hardware,
            "gripper_frame": f"twin {HAND_BODY} forward kinematics at the measured joints",
            "board": dict(board.__dict__),
            "intrinsics_K": grabber.K.tolist(),
            "distortion": grabber.dist.tolist(),
            "views": [r.to_dict() for r in records],
        }
        report = CameraCalibrationReport(camera, result, records, {}, grabber.K)
        offsets = [invert(r.T_base_gripper) @ r.O_T_EE for r in records if r.O_T_EE is not None]
        if len(offsets) >= 2:
            report.kinematics_spread = spread(offsets)
            extra["O_T_EE_in_twin_hand_spread"] = {
                "mm": report.kinematics_spread[0],
                "deg": report.kinematics_spread[1],
            }
        if truth is not None:
            report.true_error = pose_error(result.T_base_cam, truth)
            report.start_error = pose_error(PinholeCamera.from_scene(scene, camera).T_base_cam, truth)
            extra["error_vs_true_pose"] = {"mm": report.true_error[0], "deg": report.true_error[1]}
        report.files = write_calibration(
            out, scene, camera, result, grabber.K, grabber.width, grabber.height, extra=extra
        )
        return report
    finally:
        if hub is not None:
            hub.close()
        if grabber is not None:
            grabber.close()
        if source is not None:
            source.close()
        if sim is not None:
            sim.stop()


__all__ = [
    "BOARD_BODY",
    "BoardNotDetected",
    "BoardView",
    "CalibrationError",
    "CameraCalibrationReport",
    "CharucoBoardSpec",
    "ColourFrame",
    "FrankaArm",
    "HandEyeResult",
    "RealSenseGrabber",
    "TwinArm",
    "ViewRecord",
    "board_body",
    "body_board_transform",
    "calibrate_camera",
    "calibrate_eye_to_hand",
    "calibrate_known_board",
    "calibration_poses",
    "camera_cfg_from_pose",
    "collect_views",
    "detect_board",
    "hand_board_transform",
    "mean_transform",
    "pose_error",
    "scene_board_transform",
    "scene_with_board",
    "scene_with_camera",
    "solve_records",
    "spread",
    "view_problem",
    "write_calibration",
]
