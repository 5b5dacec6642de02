#!/usr/bin/env python3
"""Build the mesh-free FR3 MJCF that franka-sim loads offline (``$FR3_MJCF``).

franka-sim fetches the MuJoCo Menagerie ``franka_fr3_v2`` model from the internet on first
use. This script derives an equivalent, mesh-free model from the FR3 URDF that franka-sim
itself ships (``franka_sim/models/fr3.urdf``: Franka's kinematics and inertials) and writes
it to ``twin/assets/fr3/fr3.xml``, which is committed, so nothing is downloaded.

What makes the model track like the real arm (without these the arm drifts under
franka-sim's 4.5 kNm/rad position servo at a 1 ms step and does not follow commands):
  * joint armature, viscous damping and Coulomb friction (``frictionloss``) of the
    magnitudes the Menagerie calibrated for the FR3 (shoulder/elbow joints 1-4 heavier
    than the wrist joints 5-7);
  * the ``implicitfast`` integrator.

Geometry is capsules between joint origins, for looking at only: ``contype``/``conaffinity``
0 and not named ``*_collision``, so franka-sim's self-collision reflex is off for this
model (it says so in its log) and no contact acts on the arm.

Only the standard library is needed, so it runs under either venv:
    .venv-franka-sim/bin/python scripts/build_fr3_mjcf.py            # URDF from franka_sim
    python3 scripts/build_fr3_mjcf.py --urdf path/to/fr3.urdf --out twin/assets/fr3/fr3.xml
"""

from __future__ import annotations

import argparse
import math
import xml.etree.ElementTree as ET
from pathlib import Path

PREFIX = "fr3_"
# (armature kg m^2, damping Nm s/rad, frictionloss Nm) per joint, Menagerie-FR3 magnitudes.
JOINT_DYNAMICS = {
    1: (0.195, 0.21, 1.137),
    2: (0.195, 0.21, 1.137),
    3: (0.195, 0.21, 1.137),
    4: (0.195, 0.21, 1.137),
    5: (0.074, 0.12, 0.763),
    6: (0.074, 0.12, 0.763),
    7: (0.074, 0.12, 0.763),
}
CAPSULE_RADIUS = {0: 0.06, 1: 0.06, 2: 0.06, 3: 0.055, 4: 0.055, 5: 0.05, 6: 0.045, 7: 0.04}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "twin" / "assets" / "fr3" / "fr3.xml"


def _floats(s: str | None, n: int = 3) -> list[float]:
    return [float(v) for v in s.split()] if s else [0.0] * n


def _quat_mul(a, b):
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )


def rpy_to_quat(rpy) -> tuple[float, float, float, float]:
    """URDF fixed-axis roll-pitch-yaw -> MuJoCo (w, x, y, z): R = Rz(y) Ry(p) Rx(r)."""
    r, p, y = rpy
    qx = (math.cos(r / 2), math.sin(r / 2), 0.0, 0.0)
    qy = (math.cos(p / 2), 0.0, math.sin(p / 2), 0.0)
    qz = (math.cos(y / 2), 0.0, 0.0, math.sin(y / 2))
    return _quat_mul(qz, _quat_mul(qy, qx))


def _fmt(vals) -> str:
    return " ".join(f"{v:.10g}" for v in vals)


def default_urdf() -> Path:
    import franka_sim  # only present in .venv-franka-sim

    return Path(franka_sim.__file__).parent / "models" / "fr3.urdf"


def build(urdf_path: Path) -> str:
    robot = ET.parse(urdf_path).getroot()
    links = {link.get("name"): link for link in robot.findall("link")}
    joints = {j.find("child").get("link"): j for j in robot.findall("joint")}

    root = ET.Element("mujoco", model="fr3")
    ET.SubElement(root, "compiler", angle="radian", autolimits="true")
    ET.SubElement(root, "option", integrator="implicitfast", timestep="0.001")
    default = ET.SubElement(root, "default")
    cls = ET.SubElement(default, "default", {"class": "fr3"})
    ET.SubElement(
        cls,
        "geom",
        type="capsule",
        group="2",
        contype="0",
        conaffinity="0",
        mass="0",
        density="0",
        rgba="0.92 0.92 0.92 1",
    )
    world = ET.SubElement(root, "worldbody")

    def add_link(parent_el, link_name: str, idx: int) -> ET.Element:
        link = links[link_name]
        body = ET.SubElement(parent_el, "body", name=f"{PREFIX}{link_name}", childclass="fr3")
        j = joints.get(link_name)
        if j is not None:
            origin = j.find("origin")
            body.set("pos", _fmt(_floats(origin.get("xyz"))))
            q = rpy_to_quat(_floats(origin.get("rpy")))
            if any(abs(v) > 1e-12 for v in q[1:]):
                body.set("quat", _fmt(q))
        inertial = link.find("inertial")
        if inertial is not None:
            o = inertial.find("origin")
            i = inertial.find("inertia")
            el = ET.SubElement(
                body, "inertial", pos=_fmt(_floats(o.get("xyz"))), mass=inertial.find("mass").get("value")
            )
            vals = [float(i.get(k)) for k in ("ixx", "iyy", "izz", "ixy", "ixz", "iyz")]
            el.set("fullinertia", _fmt(vals))
        if j is not None and j.get("type") == "revolute":
            n = int(j.get("name")[-1])
            lim = j.find("limit")
            arm, damp, fric = JOINT_DYNAMICS[n]
            ET.SubElement(
                body,
                "joint",
                name=f"{PREFIX}{j.get('name')}",
                type="hinge",
                axis=_fmt(_floats(j.find("axis").get("xyz"))),
                range=f"{float(lim.get('lower')):.6g} {float(lim.get('upper')):.6g}",
                actuatorfrcrange=f"-{lim.get('effort')} {lim.get('effort')}",
                armature=str(arm),
                damping=str(damp),
                frictionloss=str(fric),
            )
        # Visual capsule towards the next arm joint's origin (or a short stub at the flange).
        child_name = f"link{idx + 1}"
        if child_name in joints:
            end = _floats(joints[child_name].find("origin").get("xyz"))
            if math.dist(end, (0, 0, 0)) < 1e-6:
                end = [0.0, 0.0, -0.1]
            ET.SubElement(
                body,
                "geom",
                name=f"{PREFIX}link{idx}_visual",
                fromto=_fmt([0, 0, 0, *end]),
                size=str(CAPSULE_RADIUS.get(idx, 0.04)),
            )
        return body

    parent = world
    for idx in range(0, 9):
        name = f"link{idx}"
        if name not in links:
            break
        if idx == 8:
            j = joints[name]
            body = ET.SubElement(parent, "body", name=f"{PREFIX}{name}", pos=_fmt(_floats(j.find("origin").get("xyz"))))
            ET.SubElement(body, "site", name=f"{PREFIX}attachment_site", size="0.01")
            break
        parent = add_link(parent, name, idx)
    ET.indent(root, space="  ")
    header = (
        "<!-- Generated by scripts/build_fr3_mjcf.py from franka-sim's models/fr3.urdf "
        "(Franka FR3 kinematics and inertials); do not edit by hand. -->\n"
    )
    return header + ET.tostring(root, encoding="unicode") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urdf", type=Path, default=None, help="FR3 URDF (default: franka_sim's)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    xml = build(args.urdf or default_urdf())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(xml)
    print(args.out)


if __name__ == "__main__":
    main()
