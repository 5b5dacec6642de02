"""The rollout worker: runs work units (one checkpoint x a batch of episodes) on kept-alive envs.

A worker process (:func:`worker_main`) lives for the whole campaign. It keeps

* its simulators: a small LRU of env batches keyed by (task, control mode, observation
  config), the unit's max_steps set on them; every ``TwinEnv`` keeps its own LRU of
  compiled scene variants, so nothing is rebuilt when the checkpoint changes;
* the current policy: the checkpoint is loaded (``load_checkpoint``, fully validated, with
  the env for the spec check) only when a unit names another checkpoint than the last one.

A unit steps ``batch_size`` envs together and calls ``policy.act`` once per step on a batch
of exactly ``batch_size`` rows at fixed positions: rows of episodes that are finished, or
not to be run (already in the results store), get a zero observation and their action is
ignored. Row ``i``'s action therefore never depends on which other episodes run, so a
unit resumed after an interruption, or re-run after a worker died, reproduces the
uninterrupted run exactly (``EvalSpec`` fixes the unit composition).

Per-episode results stream back as they finish (``("episode", unit_id, payload)``); a unit
ends with ``("done", ...)`` or ``("error", ...)``. Failures are per episode: a policy that
raises fails the episodes of its batch that are running (``policy_error``), a non-finite or
invalid action fails that episode (``policy_nonfinite_action`` / ``policy_invalid_action``),
an env that raises fails its episode (``env_error``); the env's own ``timeout`` and
``physics_unstable`` are passed through. A checkpoint that cannot be loaded or does not fit
the env is reported as ``("error", unit_id, {"kind": "checkpoint", ...})``.

Test hook (reliability tests only): ``TWINRANK_EVAL_TEST_SIGKILL="after=K,once=/path"``
makes the worker SIGKILL itself at its next env step after it has streamed ``K`` episode
results -- mid-episode -- once per ``once`` file (created atomically before the kill).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

KILL_HOOK_ENV = "TWINRANK_EVAL_TEST_SIGKILL"
_ENV_CACHE_SIZE = 2
_INFO_SKIP = {
    "success",
    "is_success",
    "step",
    "condition",
    "failure_reason",
    "action_nonfinite",
    "action_clipped",
    "action_invalid",
}

Emit = Callable[[tuple], None]


@dataclass
class CheckpointRef:
    """What a unit evaluates: a checkpoint directory (``path``) or an in-memory policy
    (``policy``, any object with ``spec``/``act``/``reset``; must be picklable for worker
    processes). ``checkpoint_id`` is the stable id results are keyed by."""

    checkpoint_id: str
    label: str
    path: str | None = None
    policy: Any = None
    task: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.policy is None):
            raise ValueError("a CheckpointRef has either a path or an in-memory policy")


@dataclass
class VideoRequest:
    """Record frames for some slots of a unit: ``slots`` maps slot index -> tag
    (``success``, ``failure``, ``worst_failure``). Every frame is labelled with the
    checkpoint, condition, seed and outcome (:func:`label_frames`)."""

    slots: dict[int, str]
    camera: str | None = None
    width: int = 320
    height: int = 240
    fps: int = 10
    format: str = "auto"


@dataclass
class WorkUnit:
    """One checkpoint x ``episodes`` (condition, seed, perturbation dict) run as one batch.

    ``run[i]`` tells whether slot ``i`` is simulated (False: already done). ``attempt``
    counts re-runs after lost workers. ``record``: slots whose observations are recorded."""

    unit_id: str
    checkpoint: CheckpointRef
    task: str
    episodes: list[tuple[str, int, dict[str, Any]]]
    run: list[bool]
    batch_size: int
    max_steps: int | None = None
    deterministic: bool = True
    video: VideoRequest | None = None
    attempt: int = 0
    device: str = "cpu"
    #: slots whose observations (what the policy acted on, every step) are sent back in a
    #: ``record`` message before their ``episode`` message (for OOD references)
    record: tuple[int, ...] = ()
    engine: str = "mujoco"

    def pending_slots(self) -> list[int]:
        return [i for i, r in enumerate(self.run) if r]


class _KillHook:
    def __init__(self) -> None:
        self.after: int | None = None
        self.once = ""
        raw = os.environ.get(KILL_HOOK_ENV, "")
        for part in filter(None, raw.split(",")):
            k, _, v = part.partition("=")
            if k.strip() == "after" and v.strip().isdigit():
                self.after = int(v)
            elif k.strip() == "once":
                self.once = v.strip()
        self.emitted = 0

    def maybe_kill(self) -> None:
        if self.after is None or self.emitted < self.after:
            return
        self.after = None
        if self.once:
            try:
                fd = os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def observation_cfg(spec: Any) -> Any:
    """The env observation config that provides exactly what a policy spec reads."""
    from twin.tasks.base import ObservationCfg

    keys = list(spec.obs_keys)
    cams: list[str] = []
    image_size = None
    for k in keys:
        if k.startswith(("rgb/", "depth/")):
            cam = k.split("/", 1)[1]
            if cam not in cams:
                cams.append(cam)
            shape = spec.obs(k).shape
            if image_size is None and len(shape) >= 2:
                image_size = (int(shape[1]), int(shape[0]))
    num_points = int(spec.obs("point_cloud").shape[0]) if "point_cloud" in keys else 2048
    return ObservationCfg(
        state="state" in keys,
        proprio="proprio" in keys,
        rgb=any(k.startswith("rgb/") for k in keys),
        depth=any(k.startswith("depth/") for k in keys),
        point_cloud="point_cloud" in keys,
        cameras=tuple(cams),
        image_size=image_size,
        num_points=num_points,
    )


class CheckpointLoadError(Exception):
    """The checkpoint of a unit cannot be evaluated (corrupt, missing, wrong spec)."""


class WorkerState:
    """Kept-alive envs and the current policy of one worker."""

    def __init__(self, kill_hook: bool = True, parent_pid: int | None = None) -> None:
        self._envs: OrderedDict[tuple, list[Any]] = OrderedDict()
        self._parent_pid = parent_pid  # exit mid-unit when that process is gone
        self._policy_id: tuple[str, str] | None = None
        self._policy: Any = None
        self._policy_spec: Any = None
        self._hook = _KillHook() if kill_hook else None
        self.loads = 0

    # ---- envs and policies -----------------------------------------------------------------
    def envs_for(
        self, task: str, control_mode: str, obs_cfg: Any, max_steps: int | None, n: int, engine: str = "mujoco"
    ) -> list[Any]:
        from twin.env import TwinEnv

        key = (task, control_mode, repr(obs_cfg), engine)  # not max_steps: set per unit below
        envs = self._envs.get(key)
        if envs is None:
            envs = []
            self._envs[key] = envs
            while len(self._envs) > _ENV_CACHE_SIZE:
                _, old = self._envs.popitem(last=False)
                for e in old:
                    e.close()
        else:
            self._envs.move_to_end(key)
        while len(envs) < n:
            envs.append(TwinEnv(task, control_mode=control_mode, observations=obs_cfg, engine=engine))
        for e in envs:
            e.set_max_steps(max_steps)
        return envs

    def policy_for(self, unit: WorkUnit) -> tuple[Any, list[Any]]:
        """(policy, envs) for a unit; loads the checkpoint only when it changed."""
        from policies.checkpoint import CheckpointError, load_checkpoint, read_manifest
        from policies.interface import PolicySpec

        ref = unit.checkpoint
        n = max(1, len(unit.pending_slots()))
        # A checkpoint directory's id is a hash of its files: the cached policy is that
        # checkpoint. In-memory policies come with the unit and are never cached.
        if ref.path is not None and self._policy is not None and self._policy_id == (ref.checkpoint_id, unit.device):
            spec = self._policy_spec
            envs = self.envs_for(
                unit.task, spec.action.control_mode, observation_cfg(spec), unit.max_steps, n, unit.engine
            )
            return self._policy, envs
        self._policy = self._policy_id = self._policy_spec = None
        try:
            if ref.path is not None:
                spec = PolicySpec.from_dict(read_manifest(ref.path)["spec"])
            else:
                spec = ref.policy.spec
        except (CheckpointError, ValueError, TypeError) as exc:
            raise CheckpointLoadError(str(exc)) from exc
        if spec.task and spec.task != unit.task:
            raise CheckpointLoadError(f"the policy is for task {spec.task!r}, the unit runs {unit.task!r}")
        try:
            envs = self.envs_for(
                unit.task, spec.action.control_mode, observation_cfg(spec), unit.max_steps, n, unit.engine
            )
        except Exception as exc:  # noqa: BLE001 - a spec the env cannot be built for
            raise CheckpointLoadError(
                f"cannot build a {unit.task!r} env for the policy's spec: {type(exc).__name__}: {exc}"
            ) from exc
        if ref.path is not None:
            try:
                policy = load_checkpoint(ref.path, device=unit.device, task_env=envs[0])
            except CheckpointError as exc:
                raise CheckpointLoadError(str(exc)) from exc
        else:
            policy = ref.policy
            problems = spec.mismatches(envs[0])
            if problems:
                raise CheckpointLoadError("the policy's spec does not match the env:\n  - " + "\n  - ".join(problems))
        if hasattr(policy, "eval"):
            policy.eval()
        self._policy, self._policy_id, self._policy_spec = policy, (ref.checkpoint_id, unit.device), spec
        if ref.path is not None:
            self.loads += 1
        return policy, envs

    def close(self) -> None:
        for envs in self._envs.values():
            for e in envs:
                e.close()
        self._envs.clear()
        self._policy = None

    # ---- a unit ------------------------------------------------------------------------------
    def run_unit(self, unit: WorkUnit, emit: Emit) -> None:
        """Run a unit, streaming messages through ``emit``; never raises for unit errors."""
        t0 = time.perf_counter()
        try:
            policy, envs = self.policy_for(unit)
        except CheckpointLoadError as exc:
            emit(("error", unit.unit_id, {"kind": "checkpoint", "message": str(exc)}))
            return
        except Exception as exc:  # noqa: BLE001
            emit(
                (
                    "error",
                    unit.unit_id,
                    {"kind": "checkpoint", "message": f"loading failed: {type(exc).__name__}: {exc}"},
                )
            )
            return
        load_s = time.perf_counter() - t0
        physics0 = sum(e.physics_s for e in envs)
        try:
            steps = self._rollout(unit, policy, envs, emit)
        except Exception as exc:  # noqa: BLE001 - a bug or an env that cannot reset
            emit(
                (
                    "error",
                    unit.unit_id,
                    {"kind": "unit", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
                )
            )
            return
        emit(
            (
                "done",
                unit.unit_id,
                {
                    "load_s": load_s,
                    "elapsed_s": time.perf_counter() - t0,
                    "steps": steps,
                    "physics_s": sum(e.physics_s for e in envs) - physics0,
                    "pid": os.getpid(),
                    "torch_threads": _torch_threads_now(),
                },
            )
        )

    def _rollout(self, unit: WorkUnit, policy: Any, envs: list[Any], emit: Emit) -> int:
        """The unit's pending episodes through the rollout engine (:func:`policies.rollout.run_episodes`),
        streaming each result (and its video) as it ends."""
        from policies.rollout import EpisodeOutcome, RolloutHooks, run_episodes
        from twin.perturbations import Condition

        B = int(unit.batch_size)
        slots = unit.pending_slots()
        if len(unit.episodes) > B:
            raise ValueError(f"unit {unit.unit_id} has {len(unit.episodes)} episodes for batch size {B}")
        env_of = {slot: envs[j] for j, slot in enumerate(slots)}
        video = unit.video
        frames: dict[int, list[np.ndarray]] = {i: [] for i in (video.slots if video else {}) if i in env_of}
        camera = (video.camera or env_of[next(iter(frames))].camera_names()[0]) if frames and video else None
        if not unit.deterministic and hasattr(policy, "seed"):
            policy.seed(_stable_seed(unit.unit_id))

        def on_step() -> None:
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                os._exit(1)  # the campaign process died: nobody reads these results
            if self._hook is not None:
                self._hook.maybe_kill()

        def on_frame(i: int, env: Any, *_: Any) -> None:
            if i in frames and video is not None:
                frames[i].append(env.render_camera(camera, video.width, video.height))

        recorded: dict[int, dict[str, list[np.ndarray]]] = {i: {} for i in unit.record if i in env_of}

        def on_obs(i: int, obs: dict[str, np.ndarray]) -> None:
            if i in recorded:
                for k in self._policy_spec.obs_keys:
                    recorded[i].setdefault(k, []).append(np.array(obs[k], copy=True))

        def on_episode(out: EpisodeOutcome) -> None:
            i = out.slot
            cond, seed, _ = unit.episodes[i]
            if i in recorded:  # before the episode: a stored result always has its record
                obs = {k: np.stack(v) for k, v in recorded.pop(i).items()}
                emit(("record", unit.unit_id, {"slot": i, "condition": cond, "seed": int(seed), "obs": obs}))
            payload = {
                "slot": i,
                "checkpoint_id": unit.checkpoint.checkpoint_id,
                "task": unit.task,
                "condition": cond,
                "seed": int(seed),
                "success": out.success,
                "return": out.ret,
                "length": out.length,
                "failure_reason": out.failure_reason,
                "error": out.error,
                "final_info": _numeric_info(out.info),
            }
            if i in frames and video is not None:
                labels = video_labels(
                    unit.checkpoint.label, cond, int(seed), out.success, out.failure_reason, video.slots[i]
                )
                data, fmt = encode_video(label_frames(frames.pop(i), labels), video.fps, video.format)
                emit(
                    (
                        "video",
                        unit.unit_id,
                        {
                            "slot": i,
                            "tag": video.slots[i],
                            "data": data,
                            "format": fmt,
                            "camera": camera,
                            "result": payload,
                        },
                    )
                )
            emit(("episode", unit.unit_id, payload))
            if self._hook is not None:
                self._hook.emitted += 1

        hooks = RolloutHooks(
            on_reset=on_frame,
            on_obs=on_obs if recorded else None,
            on_step=on_step,
            on_env_step=on_frame,
            on_episode=on_episode,
        )
        episodes = {i: (int(unit.episodes[i][1]), Condition.from_dict(unit.episodes[i][2])) for i in slots}
        _, steps = run_episodes(
            policy,
            env_of,
            episodes,
            spec=self._policy_spec,
            batch_size=B,
            deterministic=unit.deterministic,
            hooks=hooks,
        )
        return steps


def _numeric_info(info: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in info.items():
        if k in _INFO_SKIP or isinstance(v, (bool, np.bool_)):
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v):
            out[str(k)] = float(v)
    return out


def _stable_seed(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# ---------------------------------------------------------------------------------------------
# video encoding
# ---------------------------------------------------------------------------------------------


#: text colours of the frame labels (RGB)
_LABEL_WHITE = (255, 255, 255)
_LABEL_GREEN = (90, 230, 90)
_LABEL_RED = (255, 90, 90)


def video_labels(
    checkpoint: str, condition: str, seed: int, success: bool, failure_reason: str, tag: str
) -> list[tuple[str, tuple[int, int, int]]]:
    """The two lines drawn on an episode's frames: condition, seed and checkpoint (top; cut
    from the right when too long), the outcome (bottom)."""
    top = f"{condition} | seed {seed} | {checkpoint}"
    if success:
        return [(top, _LABEL_WHITE), ("SUCCESS", _LABEL_GREEN)]
    bottom = f"FAILURE: {failure_reason or 'failure'}"
    if tag == "worst_failure":
        bottom += " | worst condition"
    return [(top, _LABEL_WHITE), (bottom, _LABEL_RED)]


def label_frames(frames: list[np.ndarray], labels: list[tuple[str, tuple[int, int, int]]]) -> list[np.ndarray]:
    """``frames`` (H, W, 3 uint8) with ``labels[0]`` in a dark band at the top and
    ``labels[1:]`` at the bottom, text sized to the frame (PIL; the band is drawn once and
    pasted on every frame)."""
    from PIL import Image, ImageDraw, ImageFont

    if not frames:
        return frames
    h, w = frames[0].shape[:2]
    size = max(9, h // 20)
    font = ImageFont.load_default(size=size)
    band_h = size + max(4, size // 2)
    bands: list[tuple[int, np.ndarray, np.ndarray]] = []  # (row, pixels, mask)
    for k, (text, colour) in enumerate(labels):
        img = Image.new("RGB", (w, band_h), (0, 0, 0))
        draw = ImageDraw.Draw(img)
        if draw.textlength(text, font=font) > w - 8:  # too long for the frame: cut, with "..."
            while len(text) > 1 and draw.textlength(text + "...", font=font) > w - 8:
                text = text[:-1]
            text += "..."
        draw.text((4, (band_h - size) // 2 - 1), text, fill=colour, font=font)
        row = 0 if k == 0 else h - band_h * (len(labels) - k)
        band = np.asarray(img, dtype=np.uint8)
        bands.append((row, band, band.any(axis=2)))
    out: list[np.ndarray] = []
    for frame in frames:
        f = np.array(frame, dtype=np.uint8, copy=True)
        for row, band, mask in bands:
            region = f[row : row + band_h]
            if row < 0 or region.shape[0] != band_h:  # a frame too small for its labels: left as it is
                continue
            # a darkened band under the text keeps it readable on any scene
            region[...] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)
            region[mask] = band[mask]
        out.append(f)
    return out


def video_backend() -> str:
    """``"mp4"`` when imageio can write H.264 (imageio-ffmpeg or PyAV installed), else ``"gif"``."""
    for mod in ("imageio_ffmpeg", "av"):
        try:
            __import__(mod)
            return "mp4"
        except ImportError:
            continue
    return "gif"


def encode_video(frames: list[np.ndarray], fps: int, fmt: str = "auto") -> tuple[bytes, str]:
    """Encode RGB frames; returns (file bytes, ``"mp4"`` or ``"gif"``)."""
    import imageio.v3 as iio

    if fmt == "auto":
        fmt = video_backend()
    arr = np.stack(frames).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="twinrank-video-") as tmp:
        path = os.path.join(tmp, f"video.{fmt}")
        if fmt == "mp4":
            try:
                import imageio_ffmpeg  # noqa: F401

                iio.imwrite(
                    path,
                    arr,
                    plugin="FFMPEG",
                    fps=fps,
                    codec="libx264",
                    macro_block_size=2,
                    pixelformat="yuv420p",
                    ffmpeg_log_level="error",
                )
            except ImportError:
                iio.imwrite(path, arr, plugin="pyav", fps=fps, codec="libx264")
        elif fmt == "gif":
            iio.imwrite(path, arr, plugin="pillow", duration=1000.0 / fps, loop=0)
        else:
            raise ValueError(f"video format {fmt!r}: use mp4 or gif")
        with open(path, "rb") as f:
            return f.read(), fmt


# ---------------------------------------------------------------------------------------------
# the worker process
# ---------------------------------------------------------------------------------------------


#: seconds between two parent-alive checks of a worker's watch thread
PARENT_CHECK_S = 1.0


def die_with_parent(parent_pid: int, pdeathsig: bool = True) -> None:
    """End this process when ``parent_pid`` (the process that started it) dies, by any signal
    (:func:`twin.lifeline.bind_to_parent` with SIGKILL): the kernel's parent-death signal when
    ``pdeathsig`` (only for workers started from the parent's main thread: it fires when the
    creating *thread* ends), an immediate exit if already re-parented, and a watch thread
    that re-checks the parent every :data:`PARENT_CHECK_S` seconds."""
    from twin.lifeline import ParentGone, bind_to_parent

    try:
        bind_to_parent(
            "twinrank eval worker",
            signal.SIGKILL,
            poll_s=PARENT_CHECK_S,
            grace_s=0.0,
            expected=parent_pid,
            death_signal=pdeathsig,
        )
    except ParentGone:
        os._exit(1)


def set_worker_threads(torch_threads: str | None = None) -> int:
    """torch threads of a worker (``set_torch_threads("worker")``: 1, or ``TWINRANK_TORCH_THREADS``).
    ``torch_threads``: the driver's ``TWINRANK_TORCH_THREADS`` (None: this process's own
    environment decides), so the driver's choice also reaches workers on other machines."""
    from policies.runtime import ENV_VAR, set_torch_threads

    if torch_threads is not None:
        os.environ[ENV_VAR] = torch_threads
    return set_torch_threads("worker")


def _torch_threads_now() -> int:
    """torch's intra-op thread count in this process (0 when torch is not imported)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def worker_main(
    conn: Any, index: int = 0, parent_pid: int | None = None, torch_threads: str | None = None, pdeathsig: bool = True
) -> None:
    """Entry point of a local worker process: ``conn`` receives WorkUnits (None = stop).

    ``parent_pid``: the process that started this one (the worker ends with it, see
    :func:`die_with_parent`); ``torch_threads``: see :func:`set_worker_threads`."""
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    die_with_parent(parent, pdeathsig)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    threads = set_worker_threads(torch_threads)
    state = WorkerState(parent_pid=parent)
    try:
        conn.send(("ready", None, {"pid": os.getpid(), "index": index, "torch_threads": threads}))
        while True:
            try:
                unit = conn.recv()
            except (EOFError, OSError):
                break
            if unit is None:
                break
            state.run_unit(unit, conn.send)
    except (BrokenPipeError, EOFError, OSError):
        pass  # the parent went away
    finally:
        state.close()
        try:
            conn.close()
        except OSError:  # pragma: no cover
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter teardown (torch, EGL): seconds per worker


__all__ = [
    "CheckpointRef",
    "KILL_HOOK_ENV",
    "PARENT_CHECK_S",
    "VideoRequest",
    "WorkUnit",
    "WorkerState",
    "die_with_parent",
    "encode_video",
    "label_frames",
    "observation_cfg",
    "set_worker_threads",
    "video_backend",
    "video_labels",
    "worker_main",
]
