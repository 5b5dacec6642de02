"""Fiducial tags on the twin's objects: tag images and automatic tag placement.

A tag (:class:`~twin.scene.MarkerCfg`) is drawn with OpenCV's ArUco module. An AprilTag
36h11 tag is 8 x 8 bits: 6 x 6 data bits inside a one-bit black border; ``MarkerCfg.size``
is the edge of that black square. The printed tag adds a white quiet zone of
``QUIET_BITS`` bit around it (the official tag36h11 images have the same one-bit white
ring), so the printed square is ``printed_size(size)`` wide.

:func:`with_markers` gives a copy of a scene with one tag lying on the top face of each
movable object (box tops, cylinder caps), sized to fit the face.

OpenCV is the ``perception`` extra; this module imports it when a tag is drawn.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from twin.robot import mat_to_quat, quat_to_mat
from twin.scene import MARKER_FAMILIES, BodyCfg, MarkerCfg, Pose, SceneCfg, SceneError

log = logging.getLogger(__name__)

#: bits across a tag's black square (6 data bits + a one-bit black border each side)
TAG_BITS = 8
#: white quiet-zone width around the black square, in bits
QUIET_BITS = 1
#: the tag surface sits this far above the face it is printed on (m): a sheet of paper
TAG_LIFT = 0.0005
#: tags :func:`with_markers` makes: at most this large (m), at least ``MIN_TAG_SIZE``
MAX_TAG_SIZE = 0.06
MIN_TAG_SIZE = 0.015
#: share of the face's shorter edge the black square takes (with the quiet zone: all of it)
FACE_FILL = TAG_BITS / (TAG_BITS + 2 * QUIET_BITS)
#: a face counts as facing up when its normal is within this angle of world +z
_UP_TOLERANCE_DEG = 5.0
#: OpenCV dictionary constant name per family
_CV_DICTS = {"apriltag_36h11": "DICT_APRILTAG_36h11"}


def printed_size(size: float) -> float:
    """Edge (m) of the printed tag (black square ``size`` plus the white quiet zone)."""
    return size * (TAG_BITS + 2 * QUIET_BITS) / TAG_BITS


def cv_dictionary(family: str = "apriltag_36h11"):
    """OpenCV's ``cv2.aruco.Dictionary`` of a tag family."""
    if family not in _CV_DICTS:
        raise ValueError(f"tag family {family!r}: use one of {', '.join(_CV_DICTS)}")
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the perception extra is missing
        raise ImportError("fiducial tags need OpenCV's ArUco module: pip install 'twinrank[perception]'") from exc
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, _CV_DICTS[family]))


def tag_image(id: int, family: str = "apriltag_36h11", pixels_per_bit: int = 16) -> np.ndarray:
    """The printed tag as a square grayscale uint8 image (0 black, 255 white).

    ``(TAG_BITS + 2 * QUIET_BITS) * pixels_per_bit`` pixels wide: the black square with its
    data bits, inside a white quiet zone. Row 0 is the top of the tag seen from the front.
    """
    if family not in MARKER_FAMILIES:
        raise ValueError(f"tag family {family!r}: use one of {', '.join(MARKER_FAMILIES)}")
    if not 0 <= id < MARKER_FAMILIES[family]:
        raise ValueError(f"tag id {id}: {family} ids are 0..{MARKER_FAMILIES[family] - 1}")
    if pixels_per_bit < 1:
        raise ValueError(f"pixels_per_bit = {pixels_per_bit}: use a positive integer")
    import cv2

    inner = cv2.aruco.generateImageMarker(cv_dictionary(family), int(id), TAG_BITS * pixels_per_bit, borderBits=1)
    q = QUIET_BITS * pixels_per_bit
    return cv2.copyMakeBorder(inner, q, q, q, q, cv2.BORDER_CONSTANT, value=255)


# ---- automatic placement -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Face:
    """A flat upward face of a body: centre and axes in the body frame, edge lengths (m)."""

    centre: np.ndarray
    normal: np.ndarray  # outward, body frame
    edge_dir: np.ndarray  # unit vector along the face, body frame (the tag's x axis)
    width: float  # shorter edge: the largest square that fits
    area: float


def with_markers(scene: SceneCfg, objects: list[str] | None = None, size: float | None = None) -> SceneCfg:
    """A copy of ``scene`` with one tag on the top face of each object.

    ``objects``: body names (default: every body of kind "object", in scene order). Each tag
    lies on the body's highest upward face (a box top or cylinder cap, upward in the
    scene's rest pose), centred, its black square ``size`` m wide (default: ``FACE_FILL``
    of the face's shorter edge, so the quiet zone fills it, capped at ``MAX_TAG_SIZE``).
    Objects without such a face that holds the tag (or ``MIN_TAG_SIZE`` when ``size`` is
    None) are skipped and logged; objects that already carry a tag are left as they are.
    Ids are the lowest free ids of the family, in object order.
    """
    out = scene.copy()
    bodies = {b.name: b for b in out.iter_bodies()}
    names = [b.name for b in out.iter_bodies() if b.kind == "object"] if objects is None else list(objects)
    for n in names:
        if n not in bodies:
            raise SceneError(f"with_markers: scene {scene.name!r} has no body {n!r} (bodies: {sorted(bodies)})")
    if size is not None and not (size > 0 and math.isfinite(size)):
        raise SceneError(f"with_markers: size = {size}: a tag's black-square edge must be a positive length (m)")
    family = "apriltag_36h11"
    used = {m.id for m in out.markers if m.family == family}
    tagged = {m.body for m in out.markers}
    world_rot = _world_rotations(out)
    next_id = 0
    skipped: list[str] = []
    for n in names:
        if n in tagged:
            continue
        face = _top_face(bodies[n], world_rot[n])
        if face is None:
            skipped.append(f"{n} (no flat upward face)")
            continue
        fit = FACE_FILL * face.width
        edge = min(fit, MAX_TAG_SIZE) if size is None else size
        if edge > fit + 1e-9 or (size is None and edge < MIN_TAG_SIZE):
            skipped.append(
                f"{n} (top face {face.width * 1000:.0f} mm wide; a {edge * 1000:.0f} mm tag needs "
                f"{printed_size(edge) * 1000:.0f} mm)"
            )
            continue
        while next_id in used:
            next_id += 1
        used.add(next_id)
        x = face.edge_dir
        rot = np.stack([x, np.cross(face.normal, x), face.normal], axis=1)
        pos = face.centre + TAG_LIFT * face.normal
        out.markers.append(
            MarkerCfg(
                id=next_id,
                size=float(edge),
                body=n,
                pose=Pose(pos=tuple(float(v) for v in pos), quat=tuple(float(v) for v in mat_to_quat(rot))),
                family=family,
            )
        )
    if skipped:
        log.warning("with_markers: no tag on %s", "; ".join(skipped))
    out.validate()
    return out


def _world_rotations(scene: SceneCfg) -> dict[str, np.ndarray]:
    """Rest-pose world rotation of every body (parents' rotations composed)."""
    out: dict[str, np.ndarray] = {}

    def visit(body: BodyCfg, parent: np.ndarray) -> None:
        rot = parent @ quat_to_mat(np.asarray(body.pose.quat, float))
        out[body.name] = rot
        for child in body.children:
            visit(child, rot)

    for b in scene.bodies:
        visit(b, np.eye(3))
    return out


def _top_face(body: BodyCfg, rot_world_body: np.ndarray) -> _Face | None:
    """The body's highest flat face pointing up in the world (ties: the widest), or None."""
    up_body = rot_world_body.T @ np.array([0.0, 0.0, 1.0])
    cos_tol = math.cos(math.radians(_UP_TOLERANCE_DEG))
    faces: list[_Face] = []
    for g in body.geoms:
        if not g.visible or g.type not in ("box", "cylinder"):
            continue
        rot_bg = quat_to_mat(np.asarray(g.pose.quat, float))
        pos = np.asarray(g.pose.pos, float)
        axes = range(3) if g.type == "box" else (2,)
        for axis in axes:
            for sign in (1.0, -1.0):
                normal = sign * rot_bg[:, axis]
                if float(normal @ up_body) < cos_tol:
                    continue
                if g.type == "box":
                    half = g.size[axis]
                    others = [a for a in range(3) if a != axis]
                    edges = [2.0 * g.size[a] for a in others]
                    # the tag's x runs along the face's longer edge
                    edge_dir = rot_bg[:, others[int(np.argmax(edges))]]
                    width, area = min(edges), edges[0] * edges[1]
                else:  # a cylinder cap: the inscribed square
                    half = g.size[1]
                    edge_dir = rot_bg[:, 0]
                    width, area = math.sqrt(2.0) * g.size[0], math.pi * g.size[0] ** 2
                centre = pos + half * normal
                faces.append(_Face(centre, normal, edge_dir, width, area))
    if not faces:
        return None

    def height(f: _Face) -> float:
        return float(f.centre @ up_body)

    top = max(height(f) for f in faces)
    level = [f for f in faces if height(f) > top - 1e-3]
    return max(level, key=lambda f: (round(f.width, 6), f.area))


# ---- printing ----------------------------------------------------------------------------------


def write_printable_tags(scene: SceneCfg, out_dir: str, dpi: int = 600) -> list[dict[str, object]]:
    """Write each of ``scene``'s tags as a PNG to print at 100 % (its DPI is stored in the
    file so the black square comes out ``MarkerCfg.size`` wide) and ``tags.md``, where each
    tag goes: object, id, sizes, and the tag's pose on the body. Returns one row per tag."""
    from pathlib import Path

    from PIL import Image

    if not scene.markers:
        raise ValueError(
            f"scene {scene.name!r} has no tags; give it some (twin.fiducials.with_markers, or SceneCfg.markers)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    lines = [
        f"# Fiducial tags of scene `{scene.name}`",
        "",
        "Print each PNG at 100 % (no scaling; the files carry their DPI), check the black square "
        "with a ruler, and stick the tag on its object where the pose says: the tag's centre at "
        "`pos` in the object's body frame, the tag's normal along the body axis the quaternion maps "
        "z to, the image's top edge along the tag's +y.",
        "",
        "| tag | object | black square (mm) | printed (mm) | file | pos in body (m) | quat in body (wxyz) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in scene.markers:
        bits = TAG_BITS + 2 * QUIET_BITS
        px_per_bit = max(1, int(round(printed_size(m.size) / 0.0254 * dpi / bits)))
        img = tag_image(m.id, m.family, px_per_bit)
        real_dpi = img.shape[0] / (printed_size(m.size) / 0.0254)
        name = f"tag_{m.family}_{m.id}_{m.body}.png"
        Image.fromarray(img).save(out / name, dpi=(real_dpi, real_dpi))
        pos = tuple(round(float(v), 4) for v in m.pose.pos)
        quat = tuple(round(float(v), 4) for v in m.pose.quat)
        rows.append({"id": m.id, "body": m.body, "size_m": m.size, "file": name, "pos": pos, "quat": quat})
        lines.append(
            f"| {m.family} {m.id} | {m.body} | {1000 * m.size:.1f} | {1000 * printed_size(m.size):.1f} | "
            f"{name} | {pos} | {quat} |"
        )
    (out / "tags.md").write_text("\n".join(lines) + "\n")
    return rows


__all__ = [
    "FACE_FILL",
    "MAX_TAG_SIZE",
    "MIN_TAG_SIZE",
    "QUIET_BITS",
    "TAG_BITS",
    "TAG_LIFT",
    "cv_dictionary",
    "printed_size",
    "tag_image",
    "with_markers",
    "write_printable_tags",
]
