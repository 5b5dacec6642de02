"""The twin: a MuJoCo digital twin of a Franka cell.

Public API: scene description and compilation, the gymnasium env and its batched form,
tasks and their registry, perturbation suites, and scene I/O (USD, scans).
"""

import os

# Headless rendering needs the GL backend chosen before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from twin.batched import BatchedTwinEnv
from twin.cell import franka_cell
from twin.compile import CompiledScene, compile_scene
from twin.env import TwinEnv, make_env
from twin.perturbations import (
    Condition,
    PerturbationError,
    PerturbationSuite,
    list_factors,
    load_suite,
    nominal_condition,
)
from twin.scan import add_scan, scan_body
from twin.scene import (
    BodyCfg,
    CameraCfg,
    GeomCfg,
    JointCfg,
    LightCfg,
    PhysicsCfg,
    Pose,
    RobotCfg,
    SceneCfg,
    SceneError,
    SiteCfg,
    TextureCfg,
)
from twin.sim import TwinSim
from twin.tasks import (
    ActionCfg,
    ObservationCfg,
    Task,
    TaskCfg,
    TaskError,
    TerminationCfg,
    list_tasks,
    make_task,
    register_task,
)
from twin.usd_io import export_compiled_usd, read_scene_usd, write_scene_usd

__all__ = [
    "ActionCfg",
    "BatchedTwinEnv",
    "BodyCfg",
    "CameraCfg",
    "CompiledScene",
    "Condition",
    "GeomCfg",
    "JointCfg",
    "LightCfg",
    "ObservationCfg",
    "PerturbationError",
    "PerturbationSuite",
    "PhysicsCfg",
    "Pose",
    "RobotCfg",
    "SceneCfg",
    "SceneError",
    "SiteCfg",
    "Task",
    "TaskCfg",
    "TaskError",
    "TerminationCfg",
    "TextureCfg",
    "TwinEnv",
    "TwinSim",
    "compile_scene",
    "franka_cell",
    "list_factors",
    "list_tasks",
    "load_suite",
    "make_env",
    "make_task",
    "nominal_condition",
    "register_task",
    "add_scan",
    "scan_body",
    "read_scene_usd",
    "write_scene_usd",
    "export_compiled_usd",
]
