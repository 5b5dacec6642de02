"""The default Franka cell and its fixture/object library.

World frame: origin at the robot base on the table top (z = 0 is the table surface),
+x points away from the robot, +y to its left. Two RealSense D435i-like cameras
(640x480, fx = fy = 615 px) are placed as in CASHER (Table III: both at about
(-0.01, -/+0.50, 0.69) from the base, looking at the workspace). Point clouds are cropped
to CASHER's obj2sink crop box, [-0.8, -0.8, -0.3]..[0.8, 0.8, 1.0].
"""

from __future__ import annotations

from twin.scene import (
    BodyCfg,
    CameraCfg,
    GeomCfg,
    JointCfg,
    LightCfg,
    Pose,
    SceneCfg,
    SiteCfg,
    TextureCfg,
    box,
)

TABLE_TOP_Z = 0.0
TABLE_CENTER = (0.45, 0.0)
TABLE_HALF = (0.6, 0.75)

WOOD = (0.62, 0.48, 0.33, 1.0)
STEEL = (0.72, 0.74, 0.78, 1.0)
WHITE = (0.92, 0.92, 0.9, 1.0)


def franka_cell(name: str = "cell") -> SceneCfg:
    """Robot on a table, two cameras, two lights; tasks add their fixtures and objects."""
    table = BodyCfg(
        name="table",
        kind="table",
        geoms=[
            box(
                "table_top",
                (TABLE_HALF[0], TABLE_HALF[1], 0.02),
                (TABLE_CENTER[0], TABLE_CENTER[1], -0.02),
                rgba=(0.55, 0.55, 0.57, 1.0),
                friction=0.8,
                texture=TextureCfg(
                    builtin="checker", rgb1=(0.6, 0.6, 0.62), rgb2=(0.56, 0.56, 0.58), repeat=(8.0, 8.0)
                ),
            ),
            *[
                box(
                    f"table_leg{i}",
                    (0.03, 0.03, 0.355),
                    (TABLE_CENTER[0] + sx * (TABLE_HALF[0] - 0.05), sy * (TABLE_HALF[1] - 0.05), -0.395),
                    rgba=(0.3, 0.3, 0.3, 1.0),
                )
                for i, (sx, sy) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)])
            ],
        ],
    )
    cameras = [
        CameraCfg(name="cam_left", pos=(-0.01, 0.50, 0.69), target=(0.55, 0.0, 0.12)),
        CameraCfg(name="cam_right", pos=(-0.01, -0.50, 0.69), target=(0.55, 0.0, 0.12)),
    ]
    lights = [
        LightCfg(name="key", pos=(0.6, -0.4, 1.6), dir=(-0.1, 0.25, -1.0), diffuse=(0.65, 0.65, 0.62)),
        LightCfg(name="fill", pos=(0.2, 0.6, 1.4), dir=(0.2, -0.3, -1.0), diffuse=(0.3, 0.3, 0.32)),
    ]
    return SceneCfg(name=name, bodies=[table], cameras=cameras, lights=lights)


# ---- fixtures -----------------------------------------------------------------------------


def sink(
    name: str = "sink",
    pos: tuple[float, float] = (0.5, -0.28),
    inner: tuple[float, float] = (0.15, 0.17),
    depth: float = 0.12,
    wall: float = 0.012,
) -> tuple[BodyCfg, SiteCfg]:
    """A basin standing on the table; the site is its inner volume."""
    ix, iy = inner
    h = depth / 2.0
    geoms = [
        box(f"{name}_bottom", (ix + wall, iy + wall, wall / 2), (0, 0, wall / 2), rgba=STEEL, friction=0.8),
        box(f"{name}_wall_xp", (wall / 2, iy + wall, h), (ix + wall / 2, 0, h), rgba=STEEL),
        box(f"{name}_wall_xn", (wall / 2, iy + wall, h), (-ix - wall / 2, 0, h), rgba=STEEL),
        box(f"{name}_wall_yp", (ix, wall / 2, h), (0, iy + wall / 2, h), rgba=STEEL),
        box(f"{name}_wall_yn", (ix, wall / 2, h), (0, -iy - wall / 2, h), rgba=STEEL),
    ]
    body = BodyCfg(name=name, kind="sink", pose=Pose(pos=(pos[0], pos[1], TABLE_TOP_Z)), geoms=geoms)
    site = SiteCfg(name=name, pos=(pos[0], pos[1], TABLE_TOP_Z + wall + h), half_extents=(ix, iy, h))
    return body, site


def shelf(
    name: str = "shelf",
    pos: tuple[float, float] = (0.5, -0.3),
    height: float = 0.15,
    half: tuple[float, float] = (0.12, 0.16),
) -> tuple[BodyCfg, SiteCfg]:
    """An open shelf board on two side panels with a back panel; the site is the board top."""
    hx, hy = half
    t = 0.012
    geoms = [
        box(f"{name}_board", (hx, hy, t / 2), (0, 0, height - t / 2), rgba=WOOD, friction=0.8),
        box(f"{name}_side_l", (hx, t / 2, height / 2), (0, hy + t / 2, height / 2), rgba=WOOD),
        box(f"{name}_side_r", (hx, t / 2, height / 2), (0, -hy - t / 2, height / 2), rgba=WOOD),
        box(f"{name}_back", (t / 2, hy + t, height / 2 + 0.06), (hx + t / 2, 0, height / 2 + 0.06), rgba=WOOD),
    ]
    body = BodyCfg(name=name, kind="shelf", pose=Pose(pos=(pos[0], pos[1], TABLE_TOP_Z)), geoms=geoms)
    site = SiteCfg(
        name=name, pos=(pos[0], pos[1], TABLE_TOP_Z + height + 0.05), half_extents=(hx - 0.01, hy - 0.01, 0.05)
    )
    return body, site


def cabinet(
    name: str = "cabinet",
    pos: tuple[float, float] = (0.62, 0.05),
    half: tuple[float, float] = (0.14, 0.17),
    height: float = 0.32,
    door_range: tuple[float, float] = (0.0, 1.9),
) -> tuple[BodyCfg, SiteCfg]:
    """A cabinet whose front door swings towards the robot on a vertical hinge.

    The hinge joint ``{name}_door_hinge`` is at the door's +y edge; its position is the
    opening angle in radians (0 = closed). A vertical bar handle sits near the free edge.
    """
    hx, hy = half
    t = 0.015
    carcass = [
        box(f"{name}_back", (t / 2, hy, height / 2), (hx - t / 2, 0, height / 2), rgba=WHITE),
        box(f"{name}_side_l", (hx, t / 2, height / 2), (0, hy - t / 2, height / 2), rgba=WHITE),
        box(f"{name}_side_r", (hx, t / 2, height / 2), (0, -hy + t / 2, height / 2), rgba=WHITE),
        box(f"{name}_top", (hx, hy, t / 2), (0, 0, height - t / 2), rgba=WHITE),
        box(f"{name}_bottom", (hx, hy, t / 2), (0, 0, t / 2), rgba=WHITE),
    ]
    door_w = 2 * hy
    door = BodyCfg(
        name=f"{name}_door",
        kind="cabinet_door",
        # Door frame origin at the hinge line (front face, +y edge, bottom).
        pose=Pose(pos=(-hx - t / 2, hy, 0.0)),
        joint=JointCfg(
            name=f"{name}_door_hinge",
            type="hinge",
            axis=(0.0, 0.0, -1.0),
            range=door_range,
            damping=0.3,
            frictionloss=0.05,
        ),
        geoms=[
            box(
                f"{name}_door_panel",
                (t / 2, door_w / 2, height / 2 - 0.005),
                (0, -door_w / 2, height / 2),
                rgba=(0.35, 0.55, 0.75, 1.0),
            ),
            box(
                f"{name}_handle_bar",
                (0.008, 0.008, 0.07),
                (-0.055, -door_w + 0.045, height * 0.55),
                rgba=STEEL,
                friction=1.2,
            ),
            box(
                f"{name}_handle_top", (0.025, 0.006, 0.006), (-0.03, -door_w + 0.045, height * 0.55 + 0.064), rgba=STEEL
            ),
            box(
                f"{name}_handle_bot", (0.025, 0.006, 0.006), (-0.03, -door_w + 0.045, height * 0.55 - 0.064), rgba=STEEL
            ),
        ],
        mass=1.0,
    )
    body = BodyCfg(
        name=name, kind="cabinet", pose=Pose(pos=(pos[0], pos[1], TABLE_TOP_Z)), geoms=carcass, children=[door]
    )
    site = SiteCfg(
        name=f"{name}_handle",
        pos=(-0.055, -door_w + 0.045, height * 0.55),
        body=f"{name}_door",
        half_extents=(0.01, 0.01, 0.07),
    )
    return body, site


# ---- objects ------------------------------------------------------------------------------


def mug(
    name: str = "mug",
    pos: tuple[float, float] = (0.5, 0.2),
    radius: float = 0.03,
    half_height: float = 0.045,
    mass: float = 0.2,
    rgba: tuple[float, float, float, float] = (0.8, 0.25, 0.2, 1.0),
) -> BodyCfg:
    """A mug: a cylinder with a side handle (free body, upright at rest)."""
    return BodyCfg(
        name=name,
        kind="object",
        pose=Pose(pos=(pos[0], pos[1], TABLE_TOP_Z + half_height)),
        joint=JointCfg(name=f"{name}_free", type="free"),
        mass=mass,
        geoms=[
            GeomCfg(type="cylinder", size=(radius, half_height), rgba=rgba, name=f"{name}_body", friction=1.0),
            box(f"{name}_handle", (0.012, 0.005, 0.025), (radius + 0.012, 0, 0.005), rgba=rgba, friction=1.0),
        ],
    )


def box_object(
    name: str = "box",
    pos: tuple[float, float] = (0.45, 0.2),
    half: tuple[float, float, float] = (0.025, 0.025, 0.04),
    mass: float = 0.15,
    rgba: tuple[float, float, float, float] = (0.2, 0.45, 0.8, 1.0),
) -> BodyCfg:
    return BodyCfg(
        name=name,
        kind="object",
        pose=Pose(pos=(pos[0], pos[1], TABLE_TOP_Z + half[2])),
        joint=JointCfg(name=f"{name}_free", type="free"),
        mass=mass,
        geoms=[box(f"{name}_geom", half, rgba=rgba, friction=1.0)],
    )
