"""Logged real-robot data for policy selection.

The bag schema, writer and reader live in :mod:`twin.live.realdata` (the live recorder writes
them; selection reads them) and are re-exported here; this module adds
:func:`episodes_from_sim`, which reads the project's HDF5 sim episodes (:mod:`policies.data`)
as the same :class:`RealEpisode` structure, so one OOD / selection code path scores sim and
real. See ``selection/README_realdata.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twin.live.realdata import (
    ARM_JOINTS,
    FINGER_JOINTS,
    SCHEMA,
    SCHEMA_VERSION,
    BagNotFoundError,
    BagWriter,
    CameraIntrinsics,
    CorruptBagError,
    EmptyBagError,
    EpisodeEventError,
    Frames,
    JointNameError,
    MissingTopicError,
    PoseTrack,
    RealDataError,
    RealDataWarning,
    RealEpisode,
    bag_info,
    hold,
    iter_episodes,
    read_bag,
    sim_episode_to_real,
    task_control_dt,
    write_episodes_to_bag,
)


def episodes_from_sim(
    h5_path: str | Path,
    *,
    control_dt: float | None = None,
    keys: list[str] | None = None,
    state_from: str = "auto",
    joints_from: str = "auto",
) -> list[RealEpisode]:
    """Read a sim episode file (:mod:`policies.data`) as :class:`RealEpisode` (domain "sim").

    Mapping (see ``twin/env.py``): the privileged state stored per step is
    ``TwinEnv.state()`` = task state + robot state (7 joints, gripper width, TCP pos, quat
    wxyz), noise-free; the ``state`` observation is the same vector plus observation noise,
    and ``proprio`` is the robot state plus noise. So:

    - ``obs["state"]``: the recorded ``state`` observation (what the policy saw), else the
      privileged state (``state_from="privileged"`` forces it);
    - ``obs["proprio"]``: the recorded ``proprio``, else the last 15 privileged entries;
    - ``joint_pos``: ``proprio[:, :8]`` (as on the robot, where proprio is built from
      ``/joint_states``), else the privileged robot state; ``joint_effort``: the arm's
      torques where the episode recorded the ``effort`` observation (the proxy-real recorder
      does), else NaN; ``joint_vel`` is NaN (not stored in sim episodes);
    - ``t``: step ``i`` at ``i * control_dt`` (the task's by default);
    - images ``rgb/<cam>`` / ``depth/<cam>`` and ``point_cloud`` (camera "fused") become
      frames; object poses come from the privileged state
      (:data:`twin.live.realdata.SIM_OBJECT_OFFSETS`);
    - ``success`` = the last step's success flag, ``meta`` = condition, source, control mode.
    """
    from policies.data import DatasetError, dataset_info
    from policies.data import iter_episodes as iter_sim_episodes

    h5_path = Path(h5_path)
    try:
        info = dataset_info(h5_path)
        eps = list(iter_sim_episodes(h5_path, keys))
    except DatasetError as err:
        raise RealDataError(f"{err}") from err
    task = info["task"]
    dt = control_dt if control_dt is not None else task_control_dt(task, h5_path)
    return [
        sim_episode_to_real(
            ep,
            task,
            k,
            dt,
            source=str(h5_path),
            control_mode=info["control_mode"],
            state_from=state_from,
            joints_from=joints_from,
        )
        for k, ep in enumerate(eps)
    ]


def scene_problem(ep: Any, k: int, task: str, names: Sequence[str], error: type[ValueError]) -> tuple[str, str | None]:
    """An episode's label, and why the twin cannot rebuild its scene (None when it can): no
    seed, or no poses of the task's objects. Raises ``error`` when it is of another task."""
    label = f"{Path(ep.source).name or 'bag'} episode {ep.episode}" if ep.source else f"episode {k}"
    if ep.task and ep.task != task:
        raise error(
            f"{label} is of task {ep.task!r}, not {task!r}: give logs of {task} (or run twinrank calibrate {ep.task})"
        )
    if ep.seed is None:
        return label, "no seed (the twin cannot rebuild its scene)"
    missing = [n for n in names if n not in ep.object_poses]
    if missing:
        return label, f"no poses of {', '.join(missing)} (the scene is unknown)"
    return label, None


__all__ = [
    "ARM_JOINTS",
    "FINGER_JOINTS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "BagWriter",
    "CameraIntrinsics",
    "Frames",
    "PoseTrack",
    "RealEpisode",
    "RealDataError",
    "BagNotFoundError",
    "EmptyBagError",
    "CorruptBagError",
    "MissingTopicError",
    "JointNameError",
    "EpisodeEventError",
    "RealDataWarning",
    "read_bag",
    "iter_episodes",
    "bag_info",
    "episodes_from_sim",
    "write_episodes_to_bag",
    "hold",
    "scene_problem",
]
