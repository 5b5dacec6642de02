"""Logged real-robot data: a rosbag2 schema, a writer and a reader.

The format the live recorder (:mod:`twin.live.recorder`) and the proxy-real domain write and
selection (:mod:`selection.realdata`, which adds the project's HDF5 sim episodes) reads; it
lives here, below both.

Real (and proxy-real) Franka runs are logged as rosbag2 bags (MCAP by default, SQLite3
also read and written) with the pure-Python ``rosbags`` library: no ROS installation is
needed to read or write them, and a ROS 2 recorder node (``ros2 bag record`` on the topics
below) produces the same files. :func:`read_bag` turns a bag into :class:`RealEpisode`
objects; :func:`selection.realdata.episodes_from_sim` turns the project's own HDF5 sim
episodes (:mod:`policies.data`) into the same structure, so one OOD / selection code path scores sim
and real; :func:`write_episodes_to_bag` writes sim episodes through this schema (used by the
proxy-real domain).

Schema (version 1)
------------------
All messages use the standard ROS 2 (Jazzy) types; times are the bag's log time unless a
header stamp is said to be used (a zero stamp falls back to the log time).

``/twinrank/meta`` (std_msgs/msg/String, one message, written before any other)
    JSON ``{"schema": "twinrank-realdata", "version": 1, "task": str, "domain": "real" |
    "proxy-real" | "sim", "robot": "fr3" | "panda", ...}`` (extra keys are kept). Optional:
    without it the domain is "real" and the task comes from the episode events.
``/twinrank/episode`` (std_msgs/msg/String)
    JSON events ``{"event": "start", "episode": k, "task": str, "seed": int | null, ...}``
    and ``{"event": "end", "episode": k, "success": true | false | null,
    "failure_reason": str}`` (``success`` null = unknown). Start events may carry more keys,
    kept in ``RealEpisode.meta``: the live recorder adds ``checkpoint`` (label as in rankings),
    ``checkpoint_id`` and ``plan_trial`` for an episode of a real-trial plan
    (:mod:`twin.live.plan`), or ``checkpoint`` alone. An episode holds every message
    whose log time lies in [start, end]. A start without an end is kept (``success=None``,
    ``complete=False``, warning), an end without a start is skipped with a warning (both
    are errors with ``strict=True``). A bag without any event is read as one episode with
    unknown outcome (warning).
``/joint_states`` (sensor_msgs/msg/JointState, header stamp)
    Arm joints ``fr3_joint1..fr3_joint7`` or ``panda_joint1..panda_joint7`` (one prefix per
    bag) and the gripper's ``<prefix>_finger_joint1`` / ``<prefix>_finger_joint2`` (each
    finger's opening in m; the twin's gripper width is their sum, or twice the one reported).
    Arm and finger joints may come in one message or in separate ones (finger-only
    messages update the width, held within the episode until the next one; NaN before).
    ``velocity`` / ``effort`` may be empty (read as NaN). Other joint names in a message are ignored. Read into
    ``joint_pos`` / ``joint_vel`` / ``joint_effort`` of shape (T, 8): the twin's 7 arm
    joints + gripper width (rate, summed effort), one row per message with arm joints.
``/twinrank/obs/<key>`` (std_msgs/msg/Float32MultiArray)
    The policy's observation vectors in the twin's spaces: ``state`` (privileged state:
    task state + robot state, as ``TwinEnv.state()``) and ``proprio`` (7 joint positions,
    gripper width, TCP position 3 + quaternion wxyz 4). One message per control step; the
    layout's ``dim`` sizes give the shape (empty ``dim`` + one value = a scalar).
``/twinrank/action`` (std_msgs/msg/Float32MultiArray)
    The action sent at each control step, same layout rule (a discrete action is a scalar).
``/<cam>/color/image_raw`` (sensor_msgs/msg/Image, header stamp)
    ``rgb8`` (``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` are converted to RGB on read).
``/<cam>/depth/image_rect_raw`` (sensor_msgs/msg/Image, header stamp)
    ``16UC1`` in millimetres or ``32FC1`` in metres; read as float32 metres (0 = no return).
``/<cam>/color/camera_info`` (sensor_msgs/msg/CameraInfo)
    Intrinsics; an episode gets the latest one logged before its end (once per bag is enough).
``/<cam>/points`` (sensor_msgs/msg/PointCloud2, header stamp)
    Fields ``x``, ``y``, ``z`` (float32) and optionally ``rgb`` (packed 0x00RRGGBB in a
    float32 or uint32, PCL style); read as (N, 6) float32 x, y, z + r, g, b in [0, 1]
    (colour 0 without ``rgb``), like the twin's ``point_cloud`` observation. Sim episodes
    write their fused cloud as camera ``fused`` in frame ``world``.
``/objects/<name>/pose`` (geometry_msgs/msg/PoseStamped, header stamp)
    Object poses, read as (N, 7) ``[x, y, z, qw, qx, qy, qz]`` (the twin's wxyz order).

Only ``/joint_states`` is required by default (``read_bag(require=...)``); every other
topic is optional and topics outside the schema are ignored.

Errors are :class:`RealDataError` (a ``ValueError``) subclasses that name the bag, what is
wrong and how to fix it; recoverable problems are :class:`RealDataWarning` warnings.
Truncated/corrupt MCAP files (a cut copy, a crashed recorder) are repaired on a temporary
copy: the complete records are read, the cut episode is kept with ``success=None``.

API
---
- :class:`BagWriter` (context manager): ``start_episode``, ``write_joint_state``,
  ``write_franka_state``, ``write_obs``, ``write_action``, ``write_image``, ``write_depth``,
  ``write_camera_info``, ``write_points``, ``write_object_pose``, ``end_episode``,
  ``write_sim_episode``.
- :func:`read_bag` / :func:`iter_episodes` -> :class:`RealEpisode`; :func:`bag_info`.
- :func:`sim_episode_to_real` (one sim episode -> RealEpisode, domain "sim"; HDF5 files:
  :func:`selection.realdata.episodes_from_sim`), :func:`write_episodes_to_bag` (sim
  episodes -> bag, e.g. domain "proxy-real").
- :func:`hold`: zero-order-hold alignment of streams with different times.

See ``selection/README_realdata.md`` for the full description and examples.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
import tempfile
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "twinrank-realdata"
SCHEMA_VERSION = 1

TOPIC_META = "/twinrank/meta"
TOPIC_EPISODE = "/twinrank/episode"
TOPIC_JOINTS = "/joint_states"
TOPIC_ACTION = "/twinrank/action"
OBS_PREFIX = "/twinrank/obs/"
FUSED_CLOUD = "fused"  # camera name of a fused (world-frame) point cloud

ROBOTS = ("fr3", "panda")
ARM_JOINTS: dict[str, tuple[str, ...]] = {r: tuple(f"{r}_joint{i}" for i in range(1, 8)) for r in ROBOTS}
FINGER_JOINTS: dict[str, tuple[str, ...]] = {r: (f"{r}_finger_joint1", f"{r}_finger_joint2") for r in ROBOTS}
DOMAINS = ("real", "proxy-real", "sim")
ROBOT_STATE_DIM = 15  # twin robot state: 7 joints + gripper width + TCP pos (3) + quat wxyz (4)

#: short names accepted in ``read_bag(require=...)`` (full topic names work too)
SHORT_TOPICS = {
    "joint_states": TOPIC_JOINTS,
    "episode": TOPIC_EPISODE,
    "meta": TOPIC_META,
    "action": TOPIC_ACTION,
    "obs/state": OBS_PREFIX + "state",
    "obs/proprio": OBS_PREFIX + "proprio",
}

# message types: the live twin's (its recorder writes these bags), named once there
from twin.live.interfaces import (  # noqa: E402
    T_CAMERA_INFO,
    T_FLOATS,
    T_IMAGE,
    T_JOINT_STATE,
    T_POINTS,
    T_POSE,
    T_STRING,
)

_RE_OBS = re.compile(r"^/twinrank/obs/([A-Za-z0-9_]+)$")
_RE_COLOR = re.compile(r"^/(.+)/color/image_raw$")
_RE_DEPTH = re.compile(r"^/(.+)/depth/image_rect_raw$")
_RE_INFO = re.compile(r"^/(.+)/color/camera_info$")
_RE_POINTS = re.compile(r"^/(.+)/points$")
_RE_OBJECT = re.compile(r"^/objects/([A-Za-z0-9_]+)/pose$")
_RE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RE_CAM = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


# ---- errors --------------------------------------------------------------------------------
class RealDataError(ValueError):
    """A real-data bag is missing, unreadable or does not follow the twinrank schema."""


class BagNotFoundError(RealDataError):
    """The bag path does not exist or is not a rosbag2 folder / .mcap / .db3 file."""


class EmptyBagError(RealDataError):
    """The bag holds no messages."""


class CorruptBagError(RealDataError):
    """The bag is truncated or corrupt and nothing (or, with ``strict``, not all) could be read."""


class MissingTopicError(RealDataError):
    """A required topic has no messages in the bag."""


class JointNameError(RealDataError):
    """``/joint_states`` does not carry the Franka joint names this schema expects."""


class EpisodeEventError(RealDataError):
    """``/twinrank/episode`` events are malformed or out of order."""


class RealDataWarning(UserWarning):
    """A recoverable problem in a bag (truncation, unmatched episode events, ...)."""


# ---- data ----------------------------------------------------------------------------------
@dataclass
class Frames:
    """Timestamped frames of one camera: ``t`` (N,) float64 s and ``data`` (N arrays)."""

    t: np.ndarray
    data: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.data)

    def stack(self) -> np.ndarray:
        """All frames as one array (N, ...); they must share a shape."""
        return np.stack(self.data)


@dataclass
class CameraIntrinsics:
    """Contents of a sensor_msgs/CameraInfo: ``K`` (3, 3), distortion ``D``, image size."""

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    distortion_model: str = "plumb_bob"
    frame_id: str = ""


@dataclass
class PoseTrack:
    """Poses of one object: ``t`` (N,) s and ``pose`` (N, 7) ``[x, y, z, qw, qx, qy, qz]``."""

    t: np.ndarray
    pose: np.ndarray
    frame_id: str = "world"


@dataclass
class RealEpisode:
    """One episode of logged (real, proxy-real) or simulated data, in the twin's units.

    ``t`` (T,) float64 s are the joint-state times; ``joint_pos`` / ``joint_vel`` /
    ``joint_effort`` (T, 8) are the 7 arm joints + gripper width (NaN where not recorded).
    ``obs`` holds per-control-step observation arrays (``state``, ``proprio``: (N, D)
    float32) with their times in ``obs_t``; ``actions`` / ``action_t`` likewise. Streams
    have their own times: use :func:`hold` to align them. ``success`` is None when unknown;
    ``complete`` is False when the episode has no end event (cut off).
    """

    task: str
    episode: int
    t: np.ndarray
    joint_pos: np.ndarray
    joint_vel: np.ndarray
    joint_effort: np.ndarray
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    obs_t: dict[str, np.ndarray] = field(default_factory=dict)
    actions: np.ndarray | None = None
    action_t: np.ndarray | None = None
    images: dict[str, Frames] = field(default_factory=dict)
    depth: dict[str, Frames] = field(default_factory=dict)
    points: dict[str, Frames] = field(default_factory=dict)
    camera_info: dict[str, CameraIntrinsics] = field(default_factory=dict)
    object_poses: dict[str, PoseTrack] = field(default_factory=dict)
    success: bool | None = None
    failure_reason: str = ""
    complete: bool = True
    seed: int | None = None
    domain: str = "real"
    robot: str = ""
    joint_names: tuple[str, ...] = ()
    source: str = ""
    t_start: float = math.nan
    t_end: float = math.nan
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Number of joint-state rows."""
        return int(len(self.t))

    @property
    def duration(self) -> float:
        return float(self.t_end - self.t_start)


def hold(t_src: np.ndarray, values: np.ndarray, t_query: np.ndarray) -> np.ndarray:
    """Zero-order hold: for each query time, the last sample at or before it (the first
    sample for queries before it); ``t_src`` must be sorted. Aligns e.g. ``obs["state"]``
    to joint-state times: ``hold(ep.obs_t["state"], ep.obs["state"], ep.t)``."""
    t_src = np.asarray(t_src, dtype=float)
    if len(t_src) == 0:
        raise RealDataError("hold(): the source stream has no samples; check that the topic was recorded")
    idx = np.searchsorted(t_src, np.asarray(t_query, dtype=float), side="right") - 1
    return np.asarray(values)[np.clip(idx, 0, len(t_src) - 1)]


# ---- rosbags plumbing ----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def _ns(t: float, what: str = "t") -> int:
    t = float(t)
    if not math.isfinite(t) or t < 0:
        raise RealDataError(f"{what}={t!r} is not a valid time; pass seconds >= 0 (float)")
    return int(round(t * 1e9))


def _sec(ns: int) -> float:
    return ns / 1e9


def _stamp_ns(header: Any, log_ns: int) -> int:
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return ns if ns > 0 else log_ns


@dataclass
class _Bag:
    """Raw messages of a bag: per topic its type, count and (for loaded topics) messages."""

    path: Path
    storage: str
    types: dict[str, str]
    counts: dict[str, int]
    messages: dict[str, list[tuple[int, bytes]]]
    start_ns: int = 0
    end_ns: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    _keys: dict[str, list[int]] = field(default_factory=dict)

    def keys(self, topic: str) -> list[int]:
        """Sorted log times of a loaded topic (cached)."""
        if topic not in self._keys:
            self._keys[topic] = [m[0] for m in self.messages.get(topic, [])]
        return self._keys[topic]

    @property
    def present(self) -> list[str]:
        return sorted(t for t, n in self.counts.items() if n > 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _storage_files(path: Path) -> list[Path]:
    return sorted([*path.glob("*.mcap"), *path.glob("*.db3")])


def _load_bag(path: str | Path, want: Callable[[str], bool]) -> _Bag:
    """Read a bag's topic table and the raw messages of topics for which ``want(topic)``.

    Truncated/corrupt MCAP files are repaired on a temporary copy (complete records kept)
    and a ``truncated`` note is added; nothing is written next to the bag.
    """
    path = Path(path)
    if not path.exists():
        raise BagNotFoundError(
            f"bag {path} does not exist; pass a rosbag2 folder (with metadata.yaml) or a .mcap / .db3 file"
        )
    if path.is_dir():
        files = _storage_files(path)
        if not (path / "metadata.yaml").is_file():
            if not files:
                raise BagNotFoundError(
                    f"{path} is not a rosbag2 bag: no metadata.yaml and no .mcap/.db3 file inside; "
                    f"pass the bag folder written by ros2 bag record / BagWriter"
                )
            bag = _Bag(path, "mcap" if files[0].suffix == ".mcap" else "sqlite3", {}, {}, {})
            bag.notes.append(
                (
                    "truncated",
                    f"{path}: no metadata.yaml (was the recording interrupted?); "
                    f"read the storage files {[f.name for f in files]} directly",
                )
            )
            for f in files:
                _merge(bag, _load_file(f, want))
            return bag
        try:
            return _read_with_rosbags(path, want)
        except (RealDataError, KeyboardInterrupt):
            raise
        except Exception as err:  # rosbags ReaderError, sqlite/apsw errors, struct errors
            bag = _Bag(path, "mcap" if files and files[0].suffix == ".mcap" else "sqlite3", {}, {}, {})
            if not files or any(f.suffix != ".mcap" for f in files):
                raise CorruptBagError(
                    f"bag {path} is corrupt and cannot be read ({type(err).__name__}: {err}); "
                    f"re-copy it from the recording machine or re-record"
                ) from err
            for f in files:
                _merge(bag, _load_file(f, want))
            return bag
    if path.suffix not in (".mcap", ".db3"):
        raise BagNotFoundError(
            f"{path} is not a rosbag2 file (suffix {path.suffix!r}); pass a bag folder or a .mcap / .db3 file"
        )
    return _load_file(path, want)


def _merge(into: _Bag, other: _Bag) -> None:
    if other.total:
        into.start_ns = min(into.start_ns, other.start_ns) if into.total else other.start_ns
        into.end_ns = max(into.end_ns, other.end_ns)
    into.types.update(other.types)
    for t, n in other.counts.items():
        into.counts[t] = into.counts.get(t, 0) + n
    for t, msgs in other.messages.items():
        into.messages.setdefault(t, []).extend(msgs)
        into.messages[t].sort(key=lambda m: m[0])
    into.notes.extend(other.notes)


def _load_file(path: Path, want: Callable[[str], bool]) -> _Bag:
    if path.stat().st_size == 0:
        raise EmptyBagError(f"bag file {path} is empty (0 bytes): nothing was recorded; re-record it")
    try:
        return _read_with_rosbags(path, want)
    except (RealDataError, KeyboardInterrupt):
        raise
    except Exception as err:
        if path.suffix != ".mcap":
            raise CorruptBagError(
                f"bag file {path} is corrupt and cannot be read ({type(err).__name__}: {err}); "
                f"re-copy it from the recording machine or re-record"
            ) from err
        return _recover_mcap(path, want, err)


def _read_with_rosbags(path: Path, want: Callable[[str], bool], scan: bool = False) -> _Bag:
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        storage = "mcap" if (path.suffix == ".mcap" or any(path.glob("*.mcap"))) else "sqlite3"
        types: dict[str, str] = {}
        counts: dict[str, int] = {}
        for topic, info in reader.topics.items():
            types[topic] = info.msgtype or ""
            counts[topic] = counts.get(topic, 0) + int(info.msgcount)
        conns = [c for c in reader.connections if want(c.topic)]
        messages: dict[str, list[tuple[int, bytes]]] = {}
        if conns:
            # A repaired MCAP has no index; scan it (rosbags' indexed path needs time order).
            it = reader.storage.messages_scan(conns) if scan else reader.messages(connections=conns)
            for conn, ts, raw in it:
                messages.setdefault(conn.topic, []).append((int(ts), bytes(raw)))
        for msgs in messages.values():
            msgs.sort(key=lambda m: m[0])
        total = int(reader.message_count)
        start = int(reader.start_time) if total else 0
        end = int(reader.end_time) - 1 if total else 0
        return _Bag(path, storage, types, counts, messages, start, end)


_MCAP_MAGIC = b"\x89MCAP0\r\n"


def _recover_mcap(path: Path, want: Callable[[str], bool], err: Exception) -> _Bag:
    """Copy the complete records of a damaged MCAP file into a temporary, footer-terminated
    file and read that (rosbags then scans it without an index)."""
    data = path.read_bytes()
    if not data.startswith(_MCAP_MAGIC):
        raise CorruptBagError(
            f"bag file {path} is not an MCAP file (bad magic; {err}); re-copy it or pass the right file"
        )
    pos, end = len(_MCAP_MAGIC), len(data)
    records: list[bytes] = []
    while pos + 9 <= end:
        op = data[pos]
        (length,) = struct.unpack_from("<Q", data, pos + 1)
        stop = pos + 9 + length
        if stop > end or op in (0x0F, 0x02):  # cut record, or data end / footer reached
            break
        records.append(data[pos:stop])
        pos = stop
    if len(records) <= 1:  # only the header
        raise CorruptBagError(
            f"bag file {path} is truncated or corrupt ({err}) and holds no complete record after its "
            f"header; nothing can be recovered: re-copy it from the recording machine or re-record"
        )
    with tempfile.TemporaryDirectory(prefix="twinrank-recover-") as tmp:
        fixed = Path(tmp) / "recovered.mcap"
        with fixed.open("wb") as fh:
            fh.write(_MCAP_MAGIC)
            for rec in records:
                fh.write(rec)
            fh.write(b"\x0f" + struct.pack("<QI", 4, 0))  # data end, no crc
            fh.write(b"\x02" + struct.pack("<QQQI", 20, 0, 0, 0))  # footer: no summary
            fh.write(_MCAP_MAGIC)
        try:
            bag = _read_with_rosbags(fixed, want, scan=True)
        except Exception as err2:
            raise CorruptBagError(
                f"bag file {path} is truncated or corrupt ({err}); recovery of its complete records "
                f"failed too ({err2}): re-copy it from the recording machine or re-record"
            ) from err2
    bag.path = path
    bag.notes.append(
        (
            "truncated",
            f"bag file {path} is truncated or corrupt ({err}); read the {bag.total} "
            f"messages of its complete records (up to t={_sec(bag.end_ns):.3f} s). "
            f"Episodes cut off "
            f"are kept with success=None; re-copy the bag if the original is intact",
        )
    )
    return bag


# ---- writer --------------------------------------------------------------------------------
class BagWriter:
    """Writes one rosbag2 bag in the twinrank real-data schema (see the module docstring).

    ``path`` is the bag folder to create (it must not exist); ``fmt`` is "mcap" or
    "sqlite3"; ``compress`` zstd-compresses MCAP chunks (as ``ros2 bag record
    --compression-mode storage``); ``meta`` adds keys to the ``/twinrank/meta`` JSON. Times ``t`` are seconds (float, >= 0); ``quat`` arguments are wxyz (the
    twin's order). Use as a context manager::

        with BagWriter("runs/real_0001", task="mug_to_sink", domain="real", robot="fr3") as w:
            w.start_episode(t=0.0, seed=3)
            w.write_franka_state(0.0, q, width)
            w.write_obs(0.0, "state", state_vec)
            w.write_action(0.0, action)
            w.end_episode(success=True)
    """

    def __init__(
        self,
        path: str | Path,
        task: str,
        domain: str = "real",
        fmt: str = "mcap",
        *,
        robot: str = "fr3",
        meta: dict[str, Any] | None = None,
        compress: bool = False,
    ) -> None:
        if domain not in DOMAINS:
            raise RealDataError(f"BagWriter: domain {domain!r} is unknown; use one of {', '.join(DOMAINS)}")
        if robot not in ROBOTS:
            raise RealDataError(f"BagWriter: robot {robot!r} is unknown; use one of {', '.join(ROBOTS)}")
        if fmt not in ("mcap", "sqlite3", "db3"):
            raise RealDataError(f"BagWriter: format {fmt!r} is unknown; use 'mcap' or 'sqlite3'")
        self.path = Path(path)
        self.task = task
        self.domain = domain
        self.robot = robot
        self.fmt = "sqlite3" if fmt == "db3" else fmt
        if compress and self.fmt != "mcap":
            raise RealDataError("BagWriter: compress=True needs fmt='mcap' (SQLite3 bags are written uncompressed)")
        self.compress = compress
        self.meta: dict[str, Any] = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "task": task,
            "domain": domain,
            "robot": robot,
            **(meta or {}),
        }
        self._writer: Any = None
        self._conns: dict[str, Any] = {}
        self._meta_written = False
        self._last_ns = -1
        self._episode: int | None = None
        self._next_episode = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if self.path.exists():
            raise RealDataError(f"BagWriter: {self.path} exists already; choose a new bag folder or delete it")
        plugin = StoragePlugin.MCAP if self.fmt == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        if self.compress:
            from rosbags.rosbag2 import CompressionFormat, CompressionMode

            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        return self

    def close(self) -> None:
        if self._writer is None:
            return
        if self._episode is not None:
            warnings.warn(
                f"BagWriter {self.path}: episode {self._episode} was not ended; it will be read "
                f"with success=None (call end_episode before closing)",
                RealDataWarning,
                stacklevel=2,
            )
        self._writer.close()
        self._writer = None

    def abort(self) -> None:
        """Close without index/metadata (what a crashed recorder leaves behind)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def file(self) -> Path:
        """The storage file inside the bag folder."""
        return self.path / f"{self.path.name}.{'mcap' if self.fmt == 'mcap' else 'db3'}"

    # -- low level -----------------------------------------------------------------------------
    def _write(self, topic: str, msgtype: str, msg: Any, ns: int) -> None:
        if self._writer is None:
            raise RealDataError(f"BagWriter {self.path}: not open; use it as a context manager or call open()")
        if not self._meta_written:
            self._meta_written = True
            self._write(TOPIC_META, T_STRING, self._string(json.dumps(self.meta)), ns)
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=_typestore())
            self._conns[topic] = conn
        elif conn.msgtype != msgtype:
            raise RealDataError(
                f"BagWriter {self.path}: topic {topic} already has type {conn.msgtype}, "
                f"not {msgtype}; use another topic name"
            )
        self._writer.write(conn, ns, _typestore().serialize_cdr(msg, msgtype))
        self._last_ns = max(self._last_ns, ns)

    def _string(self, text: str) -> Any:
        return _typestore().types[T_STRING](data=text)

    def _header(self, ns: int, frame_id: str) -> Any:
        ts = _typestore()
        stamp = ts.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        return ts.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def _floats(self, vec: Any) -> Any:
        ts = _typestore()
        arr = np.asarray(vec, dtype=np.float32)
        dims, stride = [], int(arr.size)
        for i, n in enumerate(arr.shape):
            dims.append(ts.types["std_msgs/msg/MultiArrayDimension"](label=f"d{i}", size=int(n), stride=stride))
            stride = stride // max(int(n), 1)
        layout = ts.types["std_msgs/msg/MultiArrayLayout"](dim=dims, data_offset=0)
        return ts.types[T_FLOATS](layout=layout, data=np.ascontiguousarray(arr.reshape(-1)))

    # -- episodes ------------------------------------------------------------------------------
    def start_episode(
        self,
        t: float | None = None,
        episode: int | None = None,
        *,
        seed: int | None = None,
        task: str | None = None,
        **extra: Any,
    ) -> int:
        """Open an episode at ``t`` (default: just after the last message). Returns its index."""
        if self._episode is not None:
            raise RealDataError(
                f"BagWriter {self.path}: episode {self._episode} is still open; "
                f"call end_episode() before starting another"
            )
        ns = _ns(t, "start_episode t") if t is not None else self._last_ns + 1
        k = self._next_episode if episode is None else int(episode)
        event = {"event": "start", "episode": k, "task": task or self.task, "seed": seed, **extra}
        self._write(TOPIC_EPISODE, T_STRING, self._string(json.dumps(event)), ns)
        self._episode, self._next_episode = k, k + 1
        return k

    def end_episode(self, success: bool | None, failure_reason: str = "", t: float | None = None, **extra: Any) -> None:
        """Close the open episode at ``t`` (default: the last message's time); ``success``
        None = unknown."""
        if self._episode is None:
            raise RealDataError(f"BagWriter {self.path}: no episode is open; call start_episode() first")
        ns = _ns(t, "end_episode t") if t is not None else max(self._last_ns, 0)
        event = {
            "event": "end",
            "episode": self._episode,
            "success": None if success is None else bool(success),
            "failure_reason": failure_reason,
            **extra,
        }
        self._write(TOPIC_EPISODE, T_STRING, self._string(json.dumps(event)), ns)
        self._episode = None

    # -- streams -------------------------------------------------------------------------------
    def write_joint_state(self, t: float, names: Sequence[str], pos: Any, vel: Any = None, eff: Any = None) -> None:
        """A sensor_msgs/JointState with explicit joint ``names`` (velocity/effort optional)."""
        names = [str(n) for n in names]
        cols = []
        for label, v in (("pos", pos), ("vel", vel), ("eff", eff)):
            a = np.zeros(0) if v is None else np.asarray(v, dtype=np.float64).reshape(-1)
            if (label == "pos" and len(a) != len(names)) or (label != "pos" and len(a) not in (0, len(names))):
                raise RealDataError(f"write_joint_state: {label} has {len(a)} values for {len(names)} names {names}")
            cols.append(a)
        ns = _ns(t)
        msg = _typestore().types[T_JOINT_STATE](
            header=self._header(ns, ""), name=names, position=cols[0], velocity=cols[1], effort=cols[2]
        )
        self._write(TOPIC_JOINTS, T_JOINT_STATE, msg, ns)

    def write_franka_state(
        self, t: float, q: Any, width: float, dq: Any = None, tau: Any = None, width_vel: float | None = None
    ) -> None:
        """Arm joints (7) + gripper ``width`` (m, written as two fingers of width/2) under the
        bag's robot prefix."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if len(q) != 7:
            raise RealDataError(f"write_franka_state: q has {len(q)} values; pass the 7 arm joint positions")
        names = [*ARM_JOINTS[self.robot], *FINGER_JOINTS[self.robot]]
        pos = np.concatenate([q, [width / 2.0, width / 2.0]])
        vel = None
        if dq is not None:
            wv = math.nan if width_vel is None else width_vel / 2.0
            vel = np.concatenate([np.asarray(dq, dtype=np.float64).reshape(-1), [wv, wv]])
        eff = (
            None
            if tau is None
            else np.concatenate([np.asarray(tau, dtype=np.float64).reshape(-1), [math.nan, math.nan]])
        )
        self.write_joint_state(t, names, pos, vel, eff)

    def write_obs(self, t: float, key: str, vec: Any) -> None:
        """An observation vector on ``/twinrank/obs/<key>`` (``state``, ``proprio``, ...)."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise RealDataError(f"write_obs: key {key!r} must be letters, digits and '_' (e.g. 'state')")
        self._write(OBS_PREFIX + key, T_FLOATS, self._floats(vec), _ns(t))

    def write_action(self, t: float, vec: Any) -> None:
        self._write(TOPIC_ACTION, T_FLOATS, self._floats(vec), _ns(t))

    def _check_cam(self, cam: str) -> None:
        if not _RE_CAM.match(cam):
            raise RealDataError(
                f"camera name {cam!r} is not a valid ROS name; use letters, digits, '_' (segments separated by '/')"
            )

    def write_image(self, t: float, cam: str, rgb: np.ndarray, frame_id: str | None = None) -> None:
        """An rgb8 image (H, W, 3) uint8 on ``/<cam>/color/image_raw``."""
        self._check_cam(cam)
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise RealDataError(f"write_image({cam}): expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        ns = _ns(t)
        msg = _typestore().types[T_IMAGE](
            header=self._header(ns, frame_id or f"{cam}_color_optical_frame"),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )
        self._write(f"/{cam}/color/image_raw", T_IMAGE, msg, ns)

    def write_depth(
        self, t: float, cam: str, depth: np.ndarray, encoding: str = "32FC1", frame_id: str | None = None
    ) -> None:
        """A depth image (H, W) on ``/<cam>/depth/image_rect_raw``: float metres written as
        ``32FC1``, or as ``16UC1`` millimetres (rounded; NaN -> 0). uint16 input is taken as mm."""
        self._check_cam(cam)
        depth = np.asarray(depth)
        if depth.ndim != 2:
            raise RealDataError(f"write_depth({cam}): expected (H, W), got {depth.shape}")
        if depth.dtype == np.uint16:
            encoding, buf = "16UC1", depth.astype("<u2")
        elif encoding == "32FC1":
            buf = depth.astype("<f4")
        elif encoding == "16UC1":
            mm = np.nan_to_num(np.round(depth.astype(np.float64) * 1000.0), nan=0.0)
            buf = np.clip(mm, 0, 65535).astype("<u2")
        else:
            raise RealDataError(f"write_depth({cam}): encoding {encoding!r} unsupported; use '32FC1' or '16UC1'")
        h, w = buf.shape
        ns = _ns(t)
        msg = _typestore().types[T_IMAGE](
            header=self._header(ns, frame_id or f"{cam}_depth_optical_frame"),
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=w * buf.itemsize,
            data=np.frombuffer(np.ascontiguousarray(buf).tobytes(), dtype=np.uint8),
        )
        self._write(f"/{cam}/depth/image_rect_raw", T_IMAGE, msg, ns)

    def write_camera_info(
        self,
        t: float,
        cam: str,
        K: Any,
        width: int,
        height: int,
        D: Any = None,
        distortion_model: str = "plumb_bob",
        frame_id: str | None = None,
    ) -> None:
        """Intrinsics ``K`` (3x3) of ``<cam>``'s colour stream on ``/<cam>/color/camera_info``."""
        self._check_cam(cam)
        k = np.asarray(K, dtype=np.float64).reshape(-1)
        if len(k) != 9:
            raise RealDataError(f"write_camera_info({cam}): K must have 9 values (3x3), got {len(k)}")
        p = np.concatenate([k.reshape(3, 3), np.zeros((3, 1))], axis=1).reshape(-1)
        ts = _typestore()
        ns = _ns(t)
        roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = ts.types[T_CAMERA_INFO](
            header=self._header(ns, frame_id or f"{cam}_color_optical_frame"),
            height=int(height),
            width=int(width),
            distortion_model=distortion_model,
            d=np.zeros(0) if D is None else np.asarray(D, dtype=np.float64).reshape(-1),
            k=k,
            r=np.eye(3).reshape(-1),
            p=p,
            binning_x=0,
            binning_y=0,
            roi=roi,
        )
        self._write(f"/{cam}/color/camera_info", T_CAMERA_INFO, msg, ns)

    def write_points(
        self, t: float, cam: str, xyz: np.ndarray, rgb: np.ndarray | None = None, frame_id: str | None = None
    ) -> None:
        """A PointCloud2 (x, y, z float32 + packed rgb) on ``/<cam>/points``. ``rgb`` is (N, 3)
        in [0, 1] (float) or uint8. An (N, 6) ``xyz`` holds the colour in its last 3 columns."""
        self._check_cam(cam)
        pts = np.asarray(xyz, dtype=np.float32)
        if pts.ndim == 2 and pts.shape[1] == 6 and rgb is None:
            pts, rgb = pts[:, :3], pts[:, 3:]
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise RealDataError(f"write_points({cam}): expected (N, 3) or (N, 6) points, got {pts.shape}")
        n = len(pts)
        if rgb is None:
            col = np.zeros((n, 3), np.uint32)
        else:
            c = np.asarray(rgb)
            if c.shape != (n, 3):
                raise RealDataError(f"write_points({cam}): rgb must be ({n}, 3), got {c.shape}")
            col = (c if c.dtype == np.uint8 else np.clip(np.round(c.astype(np.float64) * 255.0), 0, 255)).astype(
                np.uint32
            )
        packed = (col[:, 0] << 16) | (col[:, 1] << 8) | col[:, 2]
        rec = np.zeros(
            n,
            dtype=np.dtype(
                {
                    "names": ["x", "y", "z", "rgb"],
                    "formats": ["<f4", "<f4", "<f4", "<u4"],
                    "offsets": [0, 4, 8, 12],
                    "itemsize": 16,
                }
            ),
        )
        rec["x"], rec["y"], rec["z"], rec["rgb"] = pts[:, 0], pts[:, 1], pts[:, 2], packed
        ts = _typestore()
        pf = ts.types["sensor_msgs/msg/PointField"]
        fields = [
            pf(name=nm, offset=off, datatype=7, count=1) for nm, off in (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))
        ]
        ns = _ns(t)
        msg = ts.types[T_POINTS](
            header=self._header(ns, frame_id or ("world" if cam == FUSED_CLOUD else f"{cam}_depth_optical_frame")),
            height=1,
            width=n,
            fields=fields,
            is_bigendian=False,
            point_step=16,
            row_step=16 * n,
            data=np.frombuffer(rec.tobytes(), dtype=np.uint8),
            is_dense=bool(np.isfinite(pts).all()),
        )
        self._write(f"/{cam}/points", T_POINTS, msg, ns)

    def write_object_pose(self, t: float, name: str, pos: Any, quat: Any, frame_id: str = "world") -> None:
        """Object pose on ``/objects/<name>/pose``; ``quat`` is wxyz."""
        if not _RE_NAME.match(name):
            raise RealDataError(f"write_object_pose: object name {name!r} must be letters, digits and '_'")
        p = np.asarray(pos, dtype=np.float64).reshape(-1)
        q = np.asarray(quat, dtype=np.float64).reshape(-1)
        if len(p) != 3 or len(q) != 4:
            raise RealDataError(f"write_object_pose({name}): need pos (3) and quat wxyz (4), got {len(p)}, {len(q)}")
        ts = _typestore()
        ns = _ns(t)
        pose = ts.types["geometry_msgs/msg/Pose"](
            position=ts.types["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=ts.types["geometry_msgs/msg/Quaternion"](x=q[1], y=q[2], z=q[3], w=q[0]),
        )
        self._write(f"/objects/{name}/pose", T_POSE, ts.types[T_POSE](header=self._header(ns, frame_id), pose=pose), ns)

    # -- sim episodes --------------------------------------------------------------------------
    def write_sim_episode(
        self,
        ep: Any,
        *,
        control_dt: float,
        t0: float | None = None,
        episode: int | None = None,
        task: str | None = None,
        images: bool = True,
        state_from: str = "auto",
        joints_from: str = "auto",
    ) -> float:
        """Write one :class:`policies.data.Episode` as a logged episode; returns its end time.

        Step ``i`` is at ``t0 + i * control_dt`` (``t0`` default: one ``control_dt`` after
        the last message). See :func:`episodes_from_sim` for how fields map.
        """
        dt_ns = _ns(control_dt, "control_dt")
        if dt_ns <= 0:
            raise RealDataError("write_sim_episode: control_dt must be > 0")
        t0_ns = _ns(t0, "t0") if t0 is not None else (self._last_ns + dt_ns if self._last_ns >= 0 else 0)
        mapped = _map_sim_episode(ep, task or self.task, state_from, joints_from)
        T = ep.length
        self.start_episode(
            _sec(t0_ns), episode, seed=int(ep.seed), task=task or self.task, condition=ep.condition, source=ep.source
        )
        arm, fingers = ARM_JOINTS[self.robot], FINGER_JOINTS[self.robot]
        for i in range(T):
            t = _sec(t0_ns + i * dt_ns)
            q = mapped["joints"][i]
            eff = None
            if mapped["effort"] is not None:
                eff = np.concatenate([mapped["effort"][i, :7], [np.nan, np.nan]])
            self.write_joint_state(t, [*arm, *fingers], np.concatenate([q[:7], [q[7] / 2.0, q[7] / 2.0]]), eff=eff)
            for key, arr in mapped["obs"].items():
                self.write_obs(t, key, arr[i])
            self.write_action(t, ep.actions[i])
            if images:
                for key, arr in ep.obs.items():
                    if key.startswith("rgb/"):
                        self.write_image(t, key[4:], arr[i])
                    elif key.startswith("depth/"):
                        self.write_depth(t, key[6:], arr[i])
                    elif key == "point_cloud":
                        self.write_points(t, FUSED_CLOUD, arr[i])
            for name, poses in mapped["objects"].items():
                self.write_object_pose(t, name, poses[i, :3], poses[i, 3:])
        end = _sec(t0_ns + max(T - 1, 0) * dt_ns)
        self.end_episode(ep.success, ep.failure_reason, t=end)
        return end


def write_episodes_to_bag(
    episodes: Iterable[Any],
    path: str | Path,
    task: str,
    domain: str = "proxy-real",
    fmt: str = "mcap",
    *,
    control_dt: float | None = None,
    robot: str = "panda",
    images: bool = True,
    state_from: str = "auto",
    joints_from: str = "auto",
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write sim :class:`policies.data.Episode` objects into a new bag in this schema.

    Episodes follow each other one ``control_dt`` apart, starting at t=0; ``control_dt``
    defaults to the task's. Returns the bag folder.
    """
    dt = control_dt if control_dt is not None else _task_control_dt(task, path)
    with BagWriter(path, task, domain=domain, fmt=fmt, robot=robot, meta={"control_dt": dt, **(meta or {})}) as w:
        for ep in episodes:
            w.write_sim_episode(ep, control_dt=dt, images=images, state_from=state_from, joints_from=joints_from)
    return Path(path)


# ---- sim adapter ---------------------------------------------------------------------------
#: tasks whose privileged state does not start with ``object_names`` poses: object -> offset
#: of its 7-d pose (pos + quat wxyz) in the task part of the privileged state.
SIM_OBJECT_OFFSETS: dict[str, dict[str, int]] = {
    "reach": {"mug": 0},
    "mug_to_sink": {"mug": 0},
    "box_to_shelf": {"box": 0},
    "open_cabinet": {"cabinet": 5},
    "push_t": {},  # its task state is gym-pusht's 2-D observation
}


def _task_control_dt(task: str, where: Any) -> float:
    try:
        from twin.tasks.base import make_task

        return float(make_task(task).cfg.control_dt)
    except Exception as err:
        raise RealDataError(
            f"{where}: cannot get the control period of task {task!r} ({err}); pass control_dt= explicitly"
        ) from err


def _object_offsets(task: str) -> dict[str, int]:
    if task in SIM_OBJECT_OFFSETS:
        return SIM_OBJECT_OFFSETS[task]
    try:
        from twin.tasks.base import Task, get_task_class

        cls = get_task_class(task)
    except Exception:
        return {}
    if cls.task_state is Task.task_state:  # default: poses of object_names, in order
        return {name: 7 * i for i, name in enumerate(cls.object_names)}
    return {}


def _map_sim_episode(ep: Any, task: str, state_from: str, joints_from: str) -> dict[str, Any]:
    """Twin-space arrays of a sim episode: joints (T, 8), obs {state, proprio}, object poses."""
    if state_from not in ("auto", "obs", "privileged") or joints_from not in ("auto", "proprio", "privileged"):
        raise RealDataError(
            f"state_from must be auto/obs/privileged and joints_from auto/proprio/privileged; "
            f"got {state_from!r}, {joints_from!r}"
        )
    priv = np.asarray(ep.privileged, dtype=np.float32)
    if priv.ndim != 2 or priv.shape[1] < ROBOT_STATE_DIM or len(priv) != ep.length:
        raise RealDataError(
            f"sim episode (seed {ep.seed}): privileged state has shape {priv.shape}; expected "
            f"({ep.length}, >= {ROBOT_STATE_DIM}) (task state + robot state)"
        )
    robot = priv[:, -ROBOT_STATE_DIM:]
    obs: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    if "state" in ep.obs and state_from in ("auto", "obs"):
        obs["state"], sources["state"] = np.asarray(ep.obs["state"], np.float32), "obs"
    elif state_from == "obs":
        raise RealDataError(f"sim episode (seed {ep.seed}) has no 'state' observation; use state_from='auto'")
    else:
        obs["state"], sources["state"] = priv, "privileged"
    if "proprio" in ep.obs:
        obs["proprio"], sources["proprio"] = np.asarray(ep.obs["proprio"], np.float32), "obs"
    else:
        obs["proprio"], sources["proprio"] = robot.copy(), "privileged"
    if joints_from == "privileged" or (joints_from == "auto" and "proprio" not in ep.obs):
        joints, sources["joints"] = robot[:, :8].astype(np.float64), "privileged"
    elif "proprio" in ep.obs:
        joints, sources["joints"] = np.asarray(ep.obs["proprio"], np.float64)[:, :8], "proprio"
    else:
        raise RealDataError(f"sim episode (seed {ep.seed}) has no 'proprio' observation; use joints_from='auto'")
    objects: dict[str, np.ndarray] = {}
    task_dim = priv.shape[1] - ROBOT_STATE_DIM
    for name, off in _object_offsets(task).items():
        if off + 7 <= task_dim:
            objects[name] = priv[:, off : off + 7].astype(np.float64)
    # arm joint torques where the episode recorded them (obs "effort"), NaN for the gripper
    effort = None
    if "effort" in ep.obs:
        e = np.asarray(ep.obs["effort"], np.float64).reshape(len(joints), -1)[:, :7]
        effort = np.concatenate([e, np.full((len(e), 1), np.nan)], axis=1)
    return {"joints": joints, "obs": obs, "objects": objects, "sources": sources, "effort": effort}


def sim_episode_to_real(
    ep: Any,
    task: str,
    k: int,
    control_dt: float,
    *,
    source: str = "",
    control_mode: str = "",
    state_from: str = "auto",
    joints_from: str = "auto",
) -> RealEpisode:
    """One sim episode (a :class:`policies.data.Episode`, duck-typed: ``obs``, ``actions``,
    ``privileged``, ``success``, ``seed``, ``condition``...) as the :class:`RealEpisode` a
    bag of it would read back as (domain "sim"; episode number ``k``, step ``i`` at
    ``i * control_dt``). The field mapping is described in
    :func:`selection.realdata.episodes_from_sim`, which reads the project's HDF5 files."""
    dt_ns = _ns(control_dt, "control_dt")
    m = _map_sim_episode(ep, task, state_from, joints_from)
    t = np.array([_sec(i * dt_ns) for i in range(ep.length)], dtype=np.float64)
    nan = np.full((ep.length, 8), np.nan)
    images = {key[4:]: Frames(t.copy(), list(v)) for key, v in ep.obs.items() if key.startswith("rgb/")}
    depth = {key[6:]: Frames(t.copy(), list(v)) for key, v in ep.obs.items() if key.startswith("depth/")}
    points = {FUSED_CLOUD: Frames(t.copy(), list(ep.obs["point_cloud"]))} if "point_cloud" in ep.obs else {}
    return RealEpisode(
        task=task,
        episode=k,
        t=t,
        joint_pos=m["joints"],
        joint_vel=nan,
        joint_effort=m["effort"] if m["effort"] is not None else nan.copy(),
        obs=m["obs"],
        obs_t={key: t.copy() for key in m["obs"]},
        actions=np.asarray(ep.actions, dtype=np.float32),
        action_t=t.copy(),
        images=images,
        depth=depth,
        points=points,
        object_poses={n: PoseTrack(t.copy(), p) for n, p in m["objects"].items()},
        success=ep.success,
        failure_reason=ep.failure_reason,
        complete=True,
        seed=int(ep.seed),
        domain="sim",
        robot="panda",
        joint_names=(*ARM_JOINTS["panda"], *FINGER_JOINTS["panda"]),
        source=source,
        t_start=float(t[0]) if len(t) else 0.0,
        t_end=float(t[-1]) if len(t) else 0.0,
        meta={
            "condition": ep.condition,
            "source": ep.source,
            "control_mode": control_mode,
            "control_dt": control_dt,
            "sources": m["sources"],
        },
    )


def task_control_dt(task: str, where: Any) -> float:
    """The control period of ``task`` (s); ``where`` names the file in the error."""
    return _task_control_dt(task, where)


# ---- reader --------------------------------------------------------------------------------
def _is_schema_topic(topic: str) -> bool:
    return (
        topic in (TOPIC_META, TOPIC_EPISODE, TOPIC_JOINTS, TOPIC_ACTION)
        or topic.startswith(OBS_PREFIX)
        or topic.startswith("/objects/")
        or bool(_RE_COLOR.match(topic) or _RE_DEPTH.match(topic) or _RE_INFO.match(topic) or _RE_POINTS.match(topic))
    )


def _decode(raw: bytes, msgtype: str) -> Any:
    return _typestore().deserialize_cdr(raw, msgtype)


def _check_type(bag: _Bag, topic: str, expected: str) -> None:
    found = bag.types.get(topic, "")
    if found and found != expected:
        raise RealDataError(
            f"bag {bag.path}: topic {topic} has type {found}, the schema needs {expected}; "
            f"record the right message type or rename the topic"
        )


def _meta(bag: _Bag) -> dict[str, Any]:
    msgs = bag.messages.get(TOPIC_META, [])
    if not msgs:
        return {}
    _check_type(bag, TOPIC_META, T_STRING)
    text = _decode(msgs[0][1], T_STRING).data
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise RealDataError(
            f"bag {bag.path}: {TOPIC_META} is not JSON ({err}): {text[:80]!r}; write a JSON object as in the schema"
        ) from err
    if not isinstance(meta, dict):
        raise RealDataError(f"bag {bag.path}: {TOPIC_META} must hold a JSON object, got {text[:80]!r}")
    if int(meta.get("version", SCHEMA_VERSION)) > SCHEMA_VERSION:
        raise RealDataError(
            f"bag {bag.path}: schema version {meta.get('version')} is newer than this reader "
            f"({SCHEMA_VERSION}); update twinrank"
        )
    return meta


@dataclass
class _Span:
    episode: int
    start_ns: int
    end_ns: int
    start: dict[str, Any]
    end: dict[str, Any] | None


def _episode_spans(bag: _Bag) -> list[_Span]:
    """Episode intervals from the events; problems become notes (kind "events")."""
    msgs = bag.messages.get(TOPIC_EPISODE, [])
    first_ns, last_ns = bag.start_ns, bag.end_ns
    if not msgs:
        bag.notes.append(
            (
                "events",
                f"bag {bag.path} has no {TOPIC_EPISODE} events; read the whole bag as one "
                f"episode with unknown outcome (record start/end events to split it)",
            )
        )
        return [_Span(0, first_ns, last_ns, {}, None)]
    _check_type(bag, TOPIC_EPISODE, T_STRING)
    spans: list[_Span] = []
    open_: tuple[int, dict[str, Any]] | None = None
    prev_end = -1
    for ns, raw in msgs:
        text = _decode(raw, T_STRING).data
        try:
            ev = json.loads(text)
            kind = ev["event"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise EpisodeEventError(
                f"bag {bag.path}: episode event at t={_sec(ns):.3f} s is not a JSON object "
                f"with an 'event' key ({err}): {text[:80]!r}; fix the recorder"
            ) from err
        if kind == "start":
            if open_ is not None:
                s_ns, s = open_
                bag.notes.append(
                    (
                        "events",
                        f"bag {bag.path}: episode {s.get('episode')} started at "
                        f"t={_sec(s_ns):.3f} s has no end event; kept with success=None",
                    )
                )
                spans.append(_Span(int(s.get("episode", len(spans))), s_ns, ns - 1, s, None))
                prev_end = ns - 1
            open_ = (max(ns, prev_end + 1), ev)
        elif kind == "end":
            if open_ is None:
                bag.notes.append(
                    (
                        "events",
                        f"bag {bag.path}: end event of episode {ev.get('episode')} at "
                        f"t={_sec(ns):.3f} s has no start event (recording began "
                        f"mid-episode?); its data is skipped",
                    )
                )
                continue
            s_ns, s = open_
            if "episode" in ev and "episode" in s and ev["episode"] != s["episode"]:
                raise EpisodeEventError(
                    f"bag {bag.path}: end event at t={_sec(ns):.3f} s is for episode "
                    f"{ev['episode']} but episode {s['episode']} is open; the recorder "
                    f"must end episodes in order"
                )
            spans.append(_Span(int(s.get("episode", len(spans))), s_ns, ns, s, ev))
            prev_end, open_ = ns, None
        else:
            raise EpisodeEventError(
                f"bag {bag.path}: unknown episode event {kind!r} at t={_sec(ns):.3f} s; use 'start' or 'end'"
            )
    if open_ is not None:
        s_ns, s = open_
        bag.notes.append(
            (
                "events",
                f"bag {bag.path}: episode {s.get('episode')} started at t={_sec(s_ns):.3f} s "
                f"has no end event; kept with success=None",
            )
        )
        spans.append(_Span(int(s.get("episode", len(spans))), s_ns, max(last_ns, s_ns), s, None))
    return spans


def _in_span(bag: _Bag, topic: str, span: _Span) -> list[tuple[int, bytes]]:
    keys = bag.keys(topic)
    return bag.messages.get(topic, [])[bisect_left(keys, span.start_ns) : bisect_right(keys, span.end_ns)]


class _JointMapper:
    """Maps JointState names to the twin's 8 columns; one robot prefix per bag."""

    def __init__(self, bag: _Bag, arm_joints: Sequence[str] | None, finger_joints: Sequence[str] | None) -> None:
        self.bag = bag
        self.custom = (tuple(arm_joints), tuple(finger_joints or ())) if arm_joints is not None else None
        if self.custom is not None and len(self.custom[0]) != 7:
            raise JointNameError(f"arm_joints must name 7 joints, got {len(self.custom[0])}: {self.custom[0]}")
        self.robot = ""
        self.cache: dict[tuple[str, ...], tuple[np.ndarray | None, np.ndarray]] = {}

    def expected(self) -> str:
        if self.custom is not None:
            return f"{list(self.custom[0])} (+ fingers {list(self.custom[1])})"
        return "fr3_joint1..fr3_joint7 (+ fr3_finger_joint1/2) or panda_joint1..panda_joint7 (+ panda_finger_joint1/2)"

    def names(self) -> tuple[str, ...]:
        if self.custom is not None:
            return (*self.custom[0], *self.custom[1])
        return (*ARM_JOINTS[self.robot], *FINGER_JOINTS[self.robot]) if self.robot else ()

    def map(self, names: tuple[str, ...], ns: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(arm column indices or None for finger-only messages, finger indices)."""
        hit = self.cache.get(names)
        if hit is not None:
            return hit
        index = {n: i for i, n in enumerate(names)}
        if self.custom is not None:
            candidates = [("custom", self.custom[0], self.custom[1])]
        else:
            candidates = [(r, ARM_JOINTS[r], FINGER_JOINTS[r]) for r in ROBOTS]
        for robot, arm, fingers in candidates:
            n_arm = sum(n in index for n in arm)
            fing = np.array([index[n] for n in fingers if n in index], dtype=int)
            if n_arm == 0 and len(fing) == 0:
                continue
            if self.robot and robot != self.robot:
                raise JointNameError(
                    f"bag {self.bag.path}: /joint_states at t={_sec(ns):.3f} s uses {robot} "
                    f"joint names but earlier messages used {self.robot}; expected "
                    f"{self.expected()} consistently, found {list(names)}"
                )
            if 0 < n_arm < 7:
                missing = [n for n in arm if n not in index]
                raise JointNameError(
                    f"bag {self.bag.path}: /joint_states at t={_sec(ns):.3f} s lacks arm joints "
                    f"{missing}; expected {self.expected()}, found {list(names)}"
                )
            self.robot = robot
            arm_idx = np.array([index[n] for n in arm], dtype=int) if n_arm == 7 else None
            self.cache[names] = (arm_idx, fing)
            return self.cache[names]
        raise JointNameError(
            f"bag {self.bag.path}: /joint_states at t={_sec(ns):.3f} s has none of the expected joint names: "
            f"expected {self.expected()}, found {list(names)}; remap the names when recording or pass "
            f"arm_joints=/finger_joints= to read_bag"
        )


def _gripper(vals: np.ndarray, fing: np.ndarray) -> float:
    if len(vals) == 0 or len(fing) == 0:
        return math.nan
    v = vals[fing]
    return float(v.sum()) if len(v) == 2 else float(2.0 * v[0])


def _joint_rows(
    bag: _Bag, msgs: list[tuple[int, bytes]], mapper: _JointMapper
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t, pos, vel, eff = [], [], [], []
    grip = [math.nan, math.nan, math.nan]
    for ns, raw in msgs:
        m = _decode(raw, T_JOINT_STATE)
        names = tuple(m.name)
        arm, fing = mapper.map(names, ns)
        cols = []
        for label, arr in (("position", m.position), ("velocity", m.velocity), ("effort", m.effort)):
            a = np.asarray(arr, dtype=np.float64)
            if (label == "position" and len(a) != len(names)) or (
                label != "position" and len(a) not in (0, len(names))
            ):
                raise RealDataError(
                    f"bag {bag.path}: /joint_states at t={_sec(ns):.3f} s has {len(a)} {label} "
                    f"values for {len(names)} names; fix the publisher"
                )
            cols.append(a)
        if len(fing):
            grip = [_gripper(cols[0], fing), _gripper(cols[1], fing), _gripper(cols[2], fing)]
        if arm is None:
            continue
        t.append(_sec(_stamp_ns(m.header, ns)))
        pos.append([*cols[0][arm], grip[0]])
        vel.append([*(cols[1][arm] if len(cols[1]) else [math.nan] * 7), grip[1]])
        eff.append([*(cols[2][arm] if len(cols[2]) else [math.nan] * 7), grip[2]])
    shape = (len(t), 8)
    return (
        np.asarray(t, dtype=np.float64),
        np.asarray(pos, dtype=np.float64).reshape(shape),
        np.asarray(vel, dtype=np.float64).reshape(shape),
        np.asarray(eff, dtype=np.float64).reshape(shape),
    )


def _floats_array(m: Any) -> np.ndarray:
    data = np.asarray(m.data, dtype=np.float32)[int(m.layout.data_offset) :]
    shape = tuple(int(d.size) for d in m.layout.dim)
    if not shape:
        return data.reshape(()) if len(data) == 1 else data
    if int(np.prod(shape)) == len(data):
        return data.reshape(shape)
    return data


def _stack(bag: _Bag, topic: str, rows: list[np.ndarray], episode: int) -> np.ndarray:
    shapes = {r.shape for r in rows}
    if len(shapes) > 1:
        raise RealDataError(
            f"bag {bag.path}: {topic} changes shape within episode {episode} "
            f"({sorted(shapes)}); publish fixed-size vectors"
        )
    return np.stack(rows) if rows else np.zeros((0,), np.float32)


_COLOR_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def _image_rows(m: Any, channels: int, itemsize: int, where: str) -> np.ndarray:
    h, w, step = int(m.height), int(m.width), int(m.step)
    buf = np.asarray(m.data, dtype=np.uint8)
    if step < w * channels * itemsize or len(buf) < step * h:
        raise RealDataError(
            f"{where}: image data ({len(buf)} bytes, step {step}) is too short for "
            f"{h}x{w} {m.encoding}; the message is corrupt"
        )
    return buf[: h * step].reshape(h, step)[:, : w * channels * itemsize]


def _decode_color(m: Any, where: str) -> np.ndarray:
    ch = _COLOR_CHANNELS.get(m.encoding)
    if ch is None:
        raise RealDataError(
            f"{where}: colour encoding {m.encoding!r} is not supported; record rgb8 (or bgr8, rgba8, bgra8, mono8)"
        )
    img = _image_rows(m, ch, 1, where).reshape(int(m.height), int(m.width), ch)
    if m.encoding == "mono8":
        img = np.repeat(img, 3, axis=2)
    elif m.encoding in ("bgr8", "bgra8"):
        img = img[:, :, 2::-1]
    else:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def _decode_depth(m: Any, where: str) -> np.ndarray:
    order = ">" if m.is_bigendian else "<"
    if m.encoding in ("16UC1", "mono16"):
        raw = _image_rows(m, 1, 2, where)
        mm = np.ascontiguousarray(raw).view(order + "u2").reshape(int(m.height), int(m.width))
        return mm.astype(np.float32) / np.float32(1000.0)
    if m.encoding == "32FC1":
        raw = _image_rows(m, 1, 4, where)
        return np.ascontiguousarray(raw).view(order + "f4").reshape(int(m.height), int(m.width)).astype(np.float32)
    raise RealDataError(f"{where}: depth encoding {m.encoding!r} is not supported; record 16UC1 (mm) or 32FC1 (m)")


_PF_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def _decode_points(m: Any, where: str) -> np.ndarray:
    order = ">" if m.is_bigendian else "<"
    fields = {f.name: f for f in m.fields}
    for need in ("x", "y", "z"):
        if need not in fields:
            raise RealDataError(
                f"{where}: point cloud has no field {need!r} (fields {list(fields)}); publish x, y, z float32 (+ rgb)"
            )
    names, formats, offsets = [], [], []
    for name in ("x", "y", "z", "rgb", "rgba"):
        f = fields.get(name)
        if f is None:
            continue
        if name in ("rgb", "rgba"):
            if f.datatype not in (6, 7) or "rgb" in names:
                continue
            names.append("rgb")
            formats.append(order + "u4")  # packed colour: reinterpret the float32 bits
        else:
            if f.datatype not in _PF_TYPES:
                raise RealDataError(f"{where}: point field {name!r} has unknown datatype {f.datatype}")
            names.append(name)
            formats.append(order + _PF_TYPES[f.datatype])
        offsets.append(int(f.offset))
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(m.point_step)})
    h, w, row = int(m.height), int(m.width), int(m.row_step)
    buf = np.asarray(m.data, dtype=np.uint8)
    if len(buf) < h * row or row < w * int(m.point_step):
        raise RealDataError(
            f"{where}: point cloud data ({len(buf)} bytes) is shorter than height*row_step; the message is corrupt"
        )
    rows = np.ascontiguousarray(buf[: h * row].reshape(h, row)[:, : w * int(m.point_step)])
    rec = rows.reshape(-1).view(dt)
    out = np.zeros((len(rec), 6), dtype=np.float32)
    out[:, 0], out[:, 1], out[:, 2] = rec["x"], rec["y"], rec["z"]
    if "rgb" in names:
        packed = rec["rgb"].astype(np.uint32)
        col = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1)
        out[:, 3:] = col.astype(np.float32) * np.float32(1.0 / 255.0)
    return out


def _resolve_topic(name: str) -> str:
    return name if name.startswith("/") else SHORT_TOPICS.get(name, "/" + name)


def _check_required(bag: _Bag, require: Sequence[str]) -> None:
    for name in require:
        topic = _resolve_topic(name)
        if bag.counts.get(topic, 0) == 0:
            raise MissingTopicError(
                f"bag {bag.path} has no messages on required topic {topic}; topics present: "
                f"{bag.present or 'none'}. Record {topic} (ros2 bag record ... {topic}) or drop "
                f"{name!r} from require="
            )


def _emit_notes(bag: _Bag, strict: bool) -> None:
    for kind, text in bag.notes:
        if strict:
            raise (CorruptBagError if kind == "truncated" else EpisodeEventError)(
                f"{text} (strict=True; pass strict=False to read what is there)"
            )
        warnings.warn(text, RealDataWarning, stacklevel=3)


def read_bag(
    path: str | Path,
    require: Sequence[str] = ("joint_states",),
    *,
    images: bool = True,
    strict: bool = False,
    arm_joints: Sequence[str] | None = None,
    finger_joints: Sequence[str] | None = None,
) -> list[RealEpisode]:
    """Read a bag (rosbag2 folder, or a single .mcap / .db3 file) into episodes.

    ``require``: topics that must have messages (short names: joint_states, episode, meta,
    action, obs/state, obs/proprio; or full topic names). ``images=False`` skips decoding
    images, depth and point clouds. ``strict=True`` turns truncation and unmatched episode
    events into errors. ``arm_joints`` (7 names) / ``finger_joints`` override the Franka
    joint names.
    """
    bag = _load_bag(
        path,
        _is_schema_topic
        if images
        else (
            lambda tp: _is_schema_topic(tp) and not (_RE_COLOR.match(tp) or _RE_DEPTH.match(tp) or _RE_POINTS.match(tp))
        ),
    )
    if bag.total == 0:
        raise EmptyBagError(
            f"bag {bag.path} has no messages (topics declared: {sorted(bag.types) or 'none'}); "
            f"was the recorder running? Re-record it"
        )
    _check_required(bag, require)
    meta = _meta(bag)
    spans = _episode_spans(bag)
    _emit_notes(bag, strict)
    mapper = _JointMapper(bag, arm_joints, finger_joints)
    domain = str(meta.get("domain", "real"))
    episodes = []
    for span in spans:
        episodes.append(_build_episode(bag, span, meta, domain, mapper, images))
    return episodes


def _build_episode(
    bag: _Bag, span: _Span, meta: dict[str, Any], domain: str, mapper: _JointMapper, images: bool
) -> RealEpisode:
    k = span.episode
    if TOPIC_JOINTS in bag.messages:
        _check_type(bag, TOPIC_JOINTS, T_JOINT_STATE)
    t, pos, vel, eff = _joint_rows(bag, _in_span(bag, TOPIC_JOINTS, span), mapper)
    ep = RealEpisode(
        task=str(span.start.get("task") or meta.get("task", "")),
        episode=k,
        t=t,
        joint_pos=pos,
        joint_vel=vel,
        joint_effort=eff,
        domain=domain,
        source=str(bag.path),
        t_start=_sec(span.start_ns),
        t_end=_sec(span.end_ns),
        complete=span.end is not None,
    )
    seed = span.start.get("seed")
    ep.seed = None if seed is None else int(seed)
    if span.end is not None:
        s = span.end.get("success")
        ep.success = None if s is None else bool(s)
        ep.failure_reason = str(span.end.get("failure_reason") or "")
    ep.meta = {**meta, **{key: v for key, v in span.start.items() if key not in ("event", "episode", "task", "seed")}}
    for topic in sorted(bag.messages):
        msgs = bag.messages[topic]
        where = f"bag {bag.path}: {topic}"
        if topic in (TOPIC_META, TOPIC_EPISODE, TOPIC_JOINTS):
            continue
        if (mi := _RE_INFO.match(topic)) is not None:  # bag-wide: latest before the episode's end
            _check_type(bag, topic, T_CAMERA_INFO)
            before = [m for m in msgs if m[0] <= span.end_ns]
            if before:
                c = _decode(before[-1][1], T_CAMERA_INFO)
                ep.camera_info[mi.group(1)] = CameraIntrinsics(
                    int(c.width),
                    int(c.height),
                    np.asarray(c.k, dtype=np.float64).reshape(3, 3),
                    np.asarray(c.d, dtype=np.float64),
                    str(c.distortion_model),
                    str(c.header.frame_id),
                )
            continue
        inside = _in_span(bag, topic, span)
        if not inside:
            continue
        if topic == TOPIC_ACTION or _RE_OBS.match(topic):
            _check_type(bag, topic, T_FLOATS)
            rows = [_floats_array(_decode(raw, T_FLOATS)) for _, raw in inside]
            ts = np.array([_sec(ns) for ns, _ in inside], dtype=np.float64)
            arr = _stack(bag, topic, rows, k)
            if topic == TOPIC_ACTION:
                ep.actions, ep.action_t = arr, ts
            else:
                key = topic[len(OBS_PREFIX) :]
                ep.obs[key], ep.obs_t[key] = arr, ts
        elif (mo := _RE_OBJECT.match(topic)) is not None:
            _check_type(bag, topic, T_POSE)
            ts, poses, frame = [], [], "world"
            for ns, raw in inside:
                p = _decode(raw, T_POSE)
                ts.append(_sec(_stamp_ns(p.header, ns)))
                o, q = p.pose.position, p.pose.orientation
                poses.append([o.x, o.y, o.z, q.w, q.x, q.y, q.z])
                frame = str(p.header.frame_id)
            ep.object_poses[mo.group(1)] = PoseTrack(
                np.asarray(ts, dtype=np.float64), np.asarray(poses, dtype=np.float64).reshape(-1, 7), frame
            )
        elif images and (mc := _RE_COLOR.match(topic) or _RE_DEPTH.match(topic)) is not None:
            _check_type(bag, topic, T_IMAGE)
            is_depth = _RE_DEPTH.match(topic) is not None
            frames = Frames(np.zeros(0), [])
            ts = []
            for ns, raw in inside:
                m = _decode(raw, T_IMAGE)
                ts.append(_sec(_stamp_ns(m.header, ns)))
                frames.data.append(_decode_depth(m, where) if is_depth else _decode_color(m, where))
            frames.t = np.asarray(ts, dtype=np.float64)
            (ep.depth if is_depth else ep.images)[mc.group(1)] = frames
        elif images and (mp := _RE_POINTS.match(topic)) is not None:
            _check_type(bag, topic, T_POINTS)
            frames = Frames(np.zeros(0), [])
            ts = []
            for ns, raw in inside:
                m = _decode(raw, T_POINTS)
                ts.append(_sec(_stamp_ns(m.header, ns)))
                frames.data.append(_decode_points(m, where))
            frames.t = np.asarray(ts, dtype=np.float64)
            ep.points[mp.group(1)] = frames
    ep.robot = mapper.robot if mapper.robot != "custom" else str(meta.get("robot", ""))
    ep.joint_names = mapper.names()
    return ep


def iter_episodes(
    paths: str | Path | Iterable[str | Path], require: Sequence[str] = ("joint_states",), **kwargs: Any
) -> Iterator[RealEpisode]:
    """Episodes of several bags, bag by bag (keyword arguments as :func:`read_bag`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in paths:
        yield from read_bag(p, require, **kwargs)


def bag_info(path: str | Path) -> dict[str, Any]:
    """Summary of a bag without decoding sensor data: topics (type, count), meta, episodes
    (index, task, seed, times, success), duration, and any warnings."""
    bag = _load_bag(path, lambda tp: tp in (TOPIC_META, TOPIC_EPISODE, TOPIC_JOINTS))
    if bag.total == 0:
        raise EmptyBagError(
            f"bag {bag.path} has no messages (topics declared: {sorted(bag.types) or 'none'}); "
            f"was the recorder running? Re-record it"
        )
    meta = _meta(bag)
    spans = _episode_spans(bag)
    start, end = bag.start_ns, bag.end_ns
    episodes = []
    for s in spans:
        succ = None if s.end is None else s.end.get("success")
        episodes.append(
            {
                "episode": s.episode,
                "task": s.start.get("task") or meta.get("task", ""),
                "seed": s.start.get("seed"),
                "start": _sec(s.start_ns),
                "end": _sec(s.end_ns),
                "duration": _sec(s.end_ns - s.start_ns),
                "success": succ,
                "complete": s.end is not None,
                "failure_reason": "" if s.end is None else s.end.get("failure_reason", ""),
                "joint_states": len(_in_span(bag, TOPIC_JOINTS, s)),
            }
        )
    return {
        "path": str(bag.path),
        "storage": bag.storage,
        "meta": meta,
        "topics": {t: {"type": bag.types.get(t, ""), "count": bag.counts.get(t, 0)} for t in sorted(bag.types)},
        "messages": bag.total,
        "start": _sec(start),
        "end": _sec(end),
        "duration": _sec(end - start),
        "episodes": episodes,
        "warnings": [text for _, text in bag.notes],
        "truncated": any(kind == "truncated" for kind, _ in bag.notes),
    }


__all__ = [
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
    "sim_episode_to_real",
    "task_control_dt",
    "write_episodes_to_bag",
    "hold",
]
