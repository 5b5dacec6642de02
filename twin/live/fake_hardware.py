"""Fake hardware for the live twin: franka-sim (the arm) and software RealSense cameras.

Nothing here imports rclpy; the bridges and the tests use it.

franka-sim
    :class:`FrankaSim` runs franka-sim's FCI server (MuJoCo physics speaking libfranka's
    protocol, so franky talks to it exactly as to a real FR3) as a separate process from its
    own venv (``.venv-franka-sim``: franka-sim pins numpy 1.26 and mujoco < 3.3), bound to
    127.0.0.1 on the ports libfranka always dials (1337 arm, 1338 gripper). It loads the
    repo's mesh-free FR3 model (``twin/assets/fr3/fr3.xml``, built by
    ``scripts/build_fr3_mjcf.py``) through ``$FR3_MJCF``, so nothing is downloaded.
    ``make install`` creates the venv (``make franka-sim``).

Software RealSense
    :class:`SoftwareRealSense` is a ``pyrealsense2.software_device`` with a depth (z16) and a
    colour (rgb8) stream, intrinsics, depth-to-colour extrinsics and a frame matcher: it
    behaves like a D4xx to ``rs.pipeline`` / ``rs.align`` / ``rs.pointcloud`` / ``rs.recorder``.
    :class:`FakeRealSenseHub` holds several, "plugged in" or not, and hands the camera bridge
    a fresh ``rs.context`` listing the plugged ones (as a real context lists the USB devices
    present), so unplugging and re-plugging a camera can be exercised without hardware.
    :class:`FrameFeeder` pushes frames into a device at a rate from a frame source, e.g.
    :class:`TwinCameraSource` (renders of a twin scene camera, RGB + metric depth).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twin.lifeline import spawn

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
FR3_MJCF = Path(__file__).resolve().parents[1] / "assets" / "fr3" / "fr3.xml"
SIM_SCRIPT = REPO_ROOT / "scripts" / "franka_sim_server.py"
ARM_PORT = 1337  # libfranka always dials this
GRIPPER_PORT = 1338


class FakeHardwareError(RuntimeError):
    """Fake hardware cannot be started; the message says what is missing and how to get it."""


# ---- franka-sim -----------------------------------------------------------------------------
def franka_sim_python() -> Path | None:
    """The interpreter of the franka-sim venv: ``$FRANKA_SIM_PYTHON`` or ``.venv-franka-sim``."""
    env = os.environ.get("FRANKA_SIM_PYTHON")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT / ".venv-franka-sim" / "bin" / "python")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def franka_sim_missing() -> str:
    """'' when franka-sim can be started, else why not (and how to fix it)."""
    py = franka_sim_python()
    if py is None:
        return (
            "franka-sim venv not found (.venv-franka-sim/bin/python or $FRANKA_SIM_PYTHON); "
            "run `make franka-sim` (part of `make install`)"
        )
    if not SIM_SCRIPT.is_file():
        return f"{SIM_SCRIPT} is missing"
    if not FR3_MJCF.is_file():
        return f"FR3 model {FR3_MJCF} is missing; run `make franka-sim` (scripts/build_fr3_mjcf.py)"
    try:
        subprocess.run([str(py), "-c", "import franka_sim"], check=True, capture_output=True, timeout=60)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"franka_sim does not import in {py} ({exc}); run `make franka-sim`"
    return ""


def franka_sim_unavailable(host: str = "127.0.0.1") -> str:
    """'' when franka-sim can be started and listen on ``host`` here, else why not: not
    installed, or the arm port already taken (libfranka always dials 1337; tests run in a
    private network namespace, ``scripts/isolated``, as ``make test`` does)."""
    why = franka_sim_missing()
    if why:
        return why
    if tcp_listening(host, ARM_PORT):
        return (
            f"{host}:{ARM_PORT} is taken by another process (libfranka always dials port {ARM_PORT}; run "
            f"under scripts/isolated, as make test does)"
        )
    return ""


def _listen_inodes(host: str, port: int) -> list[str]:
    """Socket inodes LISTENing on host:port (or 0.0.0.0:port), from /proc/net/tcp."""
    want_ip = socket.inet_aton(host)
    want = f"{int.from_bytes(want_ip, 'little'):08X}:{port:04X}"
    any_addr = f"00000000:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return [p[9] for p in (line.split() for line in lines) if len(p) > 9 and p[3] == "0A" and p[1] in (want, any_addr)]


def tcp_listening(host: str, port: int) -> bool:
    """Whether something LISTENs on host:port, read from /proc/net/tcp (no connection made:
    a probe connection would be taken by franka-sim as a client session)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    try:
        return bool(_listen_inodes(host, port))
    except OSError:  # not Linux: fall back to a bind test (fails if the port is taken)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return True
        return False


def socket_owner_pids(inodes: list[str]) -> list[int]:
    """PIDs holding any of these socket inodes open (processes this user may inspect)."""
    want = {f"socket:[{i}]" for i in inodes}
    pids = []
    for entry in os.listdir("/proc") if want else ():
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in want:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    return pids


def listener_pids(host: str, port: int) -> list[int]:
    """PIDs of the processes listening on host:port (empty when unknown)."""
    try:
        return socket_owner_pids(_listen_inodes(host, port))
    except OSError:
        return []


def describe_listener(host: str, port: int) -> str:
    """'PID 1234 (python .../franka_sim_server.py ...)' for whatever listens on host:port, or
    'PID unknown' when it cannot be found."""
    pids = listener_pids(host, port)
    if not pids:
        return "PID unknown"
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"PID {pid} ({cmd[:100]})")
    return ", ".join(out)


def port_in_use_message(host: str, port: int) -> str:
    """One line: who holds the franka-sim port and how to get past it."""
    pids = listener_pids(host, port)
    who = describe_listener(host, port)
    stop = f"stop it (kill {' '.join(map(str, pids))})" if pids else "stop it"
    return (
        f"{host}:{port} is already in use by {who}, e.g. a franka-sim left from another run; {stop}, or pass "
        f"reuse_simulator:=true to use it (libfranka always dials port {ARM_PORT}: one simulator per machine)"
    )


class FrankaSim:
    """franka-sim as a child process on ``host`` (127.0.0.1), arm port 1337, gripper 1338.

    ``start()`` waits until the server is up (its ``FRANKA_SIM_READY`` line, then the
    listening socket); ``stop()`` sends SIGTERM and waits for a clean exit (SIGKILL after
    ``timeout``); ``kill()`` is SIGKILL at once (a crashed/unplugged robot). Restartable.
    Output goes to ``log_path`` (default: a temp file). ``enforce_comm_constraints`` (default
    on) makes a stalled client get a real ``communication_constraints_violation`` reflex, as the
    FR3 does after 20 lost command cycles: the arm stops. Without it franka-sim keeps executing
    the last velocity reference while the client is stalled (measured: a 0.5 s SIGSTOP of
    franka_bridge mid-follow let the arm run on 0.106 rad, then trip the bridge's speed guard
    when it resumed).

    ``nice``: the process priority (default -10, best effort: needs root or CAP_SYS_NICE), set
    for the process and for its session's autogroup (it runs in a session of its own; see
    :func:`twin.lifeline.set_priority`). The simulated robot stands in for the FR3's own
    controller, a dedicated real-time computer; on a busy host priority keeps its 1 kHz
    physics/state loop near real time (when it falls behind, the desired velocities it reports
    are differenced over irregular steps and can be far off).

    The process is tied to this one (:func:`twin.lifeline.spawn`): it ends when its
    parent dies, by any signal, so no simulator outlives the run that started it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        python: str | Path | None = None,
        model: str | Path | None = None,
        enforce_comm_constraints: bool = True,
        gripper: bool = True,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        nice: int | None = -10,
    ) -> None:
        self.host = host
        self.python = Path(python) if python else franka_sim_python()
        self.model = Path(model) if model else FR3_MJCF
        self.enforce_comm_constraints = enforce_comm_constraints
        self.gripper = gripper
        self.log_path = Path(log_path) if log_path else None
        self.env = dict(env or {})
        self.nice = nice
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> FrankaSim:
        if self.running:
            return self
        if self.python is None:
            raise FakeHardwareError(franka_sim_missing())
        if not self.model.is_file():
            raise FakeHardwareError(f"FR3 model {self.model} is missing; run `make franka-sim`")
        if tcp_listening(self.host, ARM_PORT):
            raise FakeHardwareError(port_in_use_message(self.host, ARM_PORT))
        cmd = [str(self.python), "-u", str(SIM_SCRIPT), "--host", self.host, "--model", str(self.model)]
        if self.enforce_comm_constraints:
            cmd.append("--enforce-comm-constraints")
        if not self.gripper:
            cmd.append("--no-gripper")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update({"FR3_MJCF": str(self.model), "PYTHONUNBUFFERED": "1", **self.env})
        if self.log_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="franka-sim-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log_file = open(self.log_path, "ab")
        # tied to this process: the simulator ends when its parent dies, by any signal
        # (parent-death signal + its own parent watch, see twin.lifeline)
        self.proc = spawn(
            cmd,
            env=env,
            nice=self.nice,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )
        self.starts += 1
        ready = threading.Event()
        lines: list[str] = []

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if line.startswith("FRANKA_SIM_READY"):
                    ready.set()

        threading.Thread(target=pump, name="franka-sim-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FakeHardwareError(
                    f"franka-sim exited with code {self.proc.returncode} before it was "
                    f"ready; log: {self.log_path}: {self.log_tail()}"
                )
            if ready.is_set() and tcp_listening(self.host, ARM_PORT):
                return self
            time.sleep(0.02)
        self.kill()
        raise FakeHardwareError(f"franka-sim did not come up within {timeout:.0f} s; log: {self.log_path}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed. Returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("franka-sim did not stop within %.0f s; killing it", timeout)
                self.proc.kill()
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL now (what a crashed controller / pulled cable looks like to the client)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self._reap()

    def _reap(self) -> int | None:
        code = self.proc.returncode if self.proc is not None else None
        if self.proc is not None and self.proc.stdout is not None:
            try:
                self.proc.stdout.close()
            except OSError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # wait for the port to be released so a restart can bind it
        deadline = time.monotonic() + 5.0
        while tcp_listening(self.host, ARM_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except (OSError, TypeError):
            return ""

    def __enter__(self) -> FrankaSim:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---- pyrealsense2 ---------------------------------------------------------------------------
_RS = None


def import_pyrealsense2():
    """``pyrealsense2`` with libusb loaded first (the wheel links libusb-1.0 but does not ship
    it): the ``libusb-package`` wheel's copy when the system has none. Raises ImportError
    naming the missing package."""
    global _RS
    if _RS is not None:
        return _RS
    from twin.live.native import preload_libusb

    preload_libusb()
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise ImportError(
            f"pyrealsense2 cannot be imported ({exc}); `pip install pyrealsense2 libusb-package` "
            "(part of `make install`)"
        ) from exc
    _RS = rs
    return rs


@dataclass
class Intrinsics:
    """Pinhole intrinsics of one stream (pixels; no distortion)."""

    width: int = 640
    height: int = 480
    fx: float = 615.0
    fy: float = 615.0
    cx: float = 320.0
    cy: float = 240.0

    def scaled(self, width: int, height: int) -> Intrinsics:
        sx, sy = width / self.width, height / self.height
        return Intrinsics(width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def to_rs(self):
        rs = import_pyrealsense2()
        i = rs.intrinsics()
        i.width, i.height = int(self.width), int(self.height)
        i.fx, i.fy, i.ppx, i.ppy = float(self.fx), float(self.fy), float(self.cx), float(self.cy)
        i.model = rs.distortion.brown_conrady
        i.coeffs = [0.0, 0.0, 0.0, 0.0, 0.0]
        return i


class SoftwareRealSense:
    """A pyrealsense2 software device: depth (z16, ``depth_units`` m per unit) and colour
    (rgb8) at the same size and rate, both with ``intrinsics``, depth-to-colour extrinsics
    ``depth_to_color`` (4x4, identity by default: depth already registered to colour) and
    the default frame matcher. Feed it with :meth:`push`."""

    def __init__(
        self,
        serial: str = "000000000001",
        *,
        name: str = "Intel RealSense D435 (software)",
        intrinsics: Intrinsics | None = None,
        fps: int = 30,
        depth_units: float = 0.001,
        depth_to_color: np.ndarray | None = None,
    ) -> None:
        rs = import_pyrealsense2()
        self.serial = str(serial)
        self.intrinsics = intrinsics or Intrinsics()
        self.fps = int(fps)
        self.depth_units = float(depth_units)
        w, h = self.intrinsics.width, self.intrinsics.height
        dev = rs.software_device()
        dev.register_info(rs.camera_info.name, name)
        dev.register_info(rs.camera_info.serial_number, self.serial)
        dev.register_info(rs.camera_info.product_line, "D400")
        dev.register_info(rs.camera_info.firmware_version, "5.16.0.1")
        self.depth_sensor = dev.add_sensor("Stereo Module")
        self.color_sensor = dev.add_sensor("RGB Camera")
        intr = self.intrinsics.to_rs()

        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = rs.stream.depth, 0, 0
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = w, h, self.fps, 2, rs.format.z16
        vs.intrinsics = intr
        self.depth_profile = self.depth_sensor.add_video_stream(vs, True)
        self.depth_sensor.add_read_only_option(rs.option.depth_units, self.depth_units)

        cs = rs.video_stream()
        cs.type, cs.index, cs.uid = rs.stream.color, 0, 1
        cs.width, cs.height, cs.fps, cs.bpp, cs.fmt = w, h, self.fps, 3, rs.format.rgb8
        cs.intrinsics = intr
        self.color_profile = self.color_sensor.add_video_stream(cs, True)

        T = np.eye(4) if depth_to_color is None else np.asarray(depth_to_color, float)
        ext = rs.extrinsics()
        ext.rotation = [float(v) for v in T[:3, :3].reshape(-1, order="F")]  # column-major
        ext.translation = [float(v) for v in T[:3, 3]]
        self.depth_profile.register_extrinsics_to(self.color_profile, ext)
        dev.create_matcher(rs.matchers.default)
        self.device = dev
        self._frame = 0
        self._lock = threading.Lock()

    def push(self, rgb: np.ndarray, depth: np.ndarray, timestamp_ms: float | None = None) -> int:
        """Push one matched colour + depth pair. ``depth``: metres (float) or depth units
        (uint16). Returns the frame number."""
        rs = import_pyrealsense2()
        w, h = self.intrinsics.width, self.intrinsics.height
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.shape != (h, w, 3):
            raise ValueError(f"colour frame {rgb.shape}, device is {h}x{w}x3")
        if depth.dtype != np.uint16:
            d = np.nan_to_num(np.asarray(depth, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            depth = np.clip(np.round(d / self.depth_units), 0, 65535).astype(np.uint16)
        depth = np.ascontiguousarray(depth)
        if depth.shape != (h, w):
            raise ValueError(f"depth frame {depth.shape}, device is {h}x{w}")
        ts = time.time() * 1000.0 if timestamp_ms is None else float(timestamp_ms)
        with self._lock:
            n = self._frame
            self._frame += 1
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride = depth, 2, w * 2
            f.timestamp, f.domain, f.frame_number = ts, rs.timestamp_domain.system_time, n
            f.profile = self.depth_profile.as_video_stream_profile()
            f.depth_units = self.depth_units
            self.depth_sensor.on_video_frame(f)
            g = rs.software_video_frame()
            g.pixels, g.bpp, g.stride = rgb, 3, w * 3
            g.timestamp, g.domain, g.frame_number = ts, rs.timestamp_domain.system_time, n
            g.profile = self.color_profile.as_video_stream_profile()
            self.color_sensor.on_video_frame(g)
        return n


class FakeRealSenseHub:
    """Software cameras that can be plugged in and out.

    :meth:`context` returns a new ``rs.context`` holding the plugged devices (the camera bridge
    asks for one per connection attempt, as it creates a fresh context for real USB devices).
    Frames of an unplugged camera are dropped by its :class:`FrameFeeder`.
    """

    def __init__(self) -> None:
        self.devices: dict[str, SoftwareRealSense] = {}
        self.plugged: set[str] = set()
        self.feeders: dict[str, FrameFeeder] = {}
        self._contexts: list[Any] = []
        self._events: list[Any] = []
        self._lock = threading.Lock()

    def add(self, dev: SoftwareRealSense, plugged: bool = True) -> SoftwareRealSense:
        with self._lock:
            self.devices[dev.serial] = dev
            if plugged:
                self.plugged.add(dev.serial)
        return dev

    def plug(self, serial: str) -> None:
        with self._lock:
            self.plugged.add(serial)

    def unplug(self, serial: str) -> None:
        with self._lock:
            self.plugged.discard(serial)

    def is_plugged(self, serial: str) -> bool:
        return serial in self.plugged

    def context(self):
        rs = import_pyrealsense2()
        ctx = rs.context()
        # pipeline sees software devices only while the devices-changed events are kept alive
        ctx.set_devices_changed_callback(self._events.append)
        with self._lock:
            for serial in sorted(self.plugged):
                self.devices[serial].device.add_to(ctx)
            self._contexts.append(ctx)
            del self._contexts[:-8]
            del self._events[:-64]
        return ctx

    def feed(self, serial: str, source: FrameSource, fps: float | None = None) -> FrameFeeder:
        dev = self.devices[serial]
        feeder = FrameFeeder(dev, source, fps or dev.fps, active=lambda: serial in self.plugged)
        self.feeders[serial] = feeder
        return feeder.start()

    def close(self) -> None:
        for f in self.feeders.values():
            f.stop()
        self.feeders.clear()


FrameSource = Callable[[], "tuple[np.ndarray, np.ndarray]"]  # () -> (rgb uint8 HxWx3, depth m HxW)


class FrameFeeder:
    """Pushes ``source()`` frames into a :class:`SoftwareRealSense` at ``fps`` in a thread
    (while ``active()``). A source slower than ``fps`` sets the rate."""

    def __init__(
        self, device: SoftwareRealSense, source: FrameSource, fps: float, active: Callable[[], bool] | None = None
    ) -> None:
        self.device = device
        self.source = source
        self.period = 1.0 / max(float(fps), 0.1)
        self.active = active or (lambda: True)
        self.frames = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FrameFeeder:
        self._thread = threading.Thread(target=self._run, name=f"rs-feed-{self.device.serial}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # GL contexts must be released by the thread that made them
            closer = getattr(self.source, "close_thread", None)
            if callable(closer):
                closer()

    def _loop(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            if self.active():
                try:
                    rgb, depth = self.source()
                    self.device.push(rgb, depth)
                    self.frames += 1
                    self.error = ""
                except Exception as exc:  # keep feeding; say why a frame was skipped
                    if str(exc) != self.error:
                        log.warning("software camera %s: frame skipped: %s", self.device.serial, exc)
                    self.error = str(exc)
            nxt += self.period
            delay = nxt - time.monotonic()
            if delay < 0:
                nxt = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def pattern_source(intr: Intrinsics, depth_m: float = 1.0) -> FrameSource:
    """A fixed test pattern: a plane at ``depth_m`` with a colour gradient (r = u, g = v)."""
    u = np.linspace(0, 255, intr.width, dtype=np.float32)[None, :].repeat(intr.height, 0)
    v = np.linspace(0, 255, intr.height, dtype=np.float32)[:, None].repeat(intr.width, 1)
    rgb = np.stack([u, v, np.full_like(u, 128)], axis=-1).astype(np.uint8)
    depth = np.full((intr.height, intr.width), float(depth_m), np.float32)
    return lambda: (rgb, depth)


class TwinCameraSource:
    """Renders of a twin scene camera: RGB + metric depth along the optical axis (what a
    RealSense z16 stream holds; beyond ``max_depth_m`` = 0, "no data", as on the device).
    ``joints`` (callable returning 7 arm joints or None) poses the twin's robot before each
    render, e.g. from the latest ``/joint_states``. The GL context is per thread (EGL contexts
    are bound to the thread that made them), so a feeder thread renders with its own twin.

    The rendered cell is the task's scene (or ``cfg``'s, e.g. with fiducial markers) reset at
    ``seed``: a seed other than the twin's puts the objects where the twin does not have them,
    as a real cell would. ``intrinsics`` are in the device's (OpenCV's) convention, pixel
    centres at integers (:class:`twin.live.camera_model.PinholeCamera`)."""

    def __init__(
        self,
        task: str = "reach",
        camera: str | None = None,
        width: int = 320,
        height: int = 240,
        joints: Callable[[], Any] | None = None,
        max_depth_m: float = 6.0,
        cfg: Any = None,
        seed: int = 0,
    ) -> None:
        from twin.live.camera_model import PinholeCamera
        from twin.tasks import make_task

        self.task = task
        self.cfg = cfg
        self.seed = int(seed)
        scene = (cfg if cfg is not None else make_task(task).cfg).scene
        names = [c.name for c in scene.cameras]
        if not names:
            raise FakeHardwareError(f"twin task {task!r} has no cameras to render")
        self.camera = camera if camera in names else names[0]
        self.width, self.height = int(width), int(height)
        self.joints = joints
        self.max_depth_m = float(max_depth_m)
        k = PinholeCamera.from_scene(scene, self.camera, self.width, self.height).K
        self.intrinsics = Intrinsics(self.width, self.height, k[0, 0], k[1, 1], k[0, 2], k[1, 2])
        self._local = threading.local()
        self._envs: list[Any] = []

    def _env(self):
        env = getattr(self._local, "env", None)
        if env is None:
            from twin.env import TwinEnv

            env = TwinEnv(self.task, self.cfg, render_size=(self.width, self.height))
            env.reset(seed=self.seed)
            self._local.env = env
            self._envs.append(env)
        return env

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        env = self._env()
        q = self.joints() if self.joints is not None else None
        if q is not None:
            import mujoco

            sim = env.sim
            sim.data.qpos[sim.h.qpos_adr] = np.asarray(q, float)[:7]
            mujoco.mj_kinematics(sim.model, sim.data)
        rgb = env.render_camera(self.camera, self.width, self.height)
        depth = env.render_camera(self.camera, self.width, self.height, depth=True)
        depth = np.where((depth > 0) & (depth < self.max_depth_m), depth, 0.0).astype(np.float32)
        return rgb, depth

    def close_thread(self) -> None:
        """Close this thread's twin (and its GL context)."""
        env = getattr(self._local, "env", None)
        if env is not None:
            self._local.env = None
            if env in self._envs:
                self._envs.remove(env)
            env.close()

    def close(self) -> None:
        """Close the calling thread's twin; feeders close their own (:meth:`close_thread`)."""
        self.close_thread()


__all__ = [
    "FrankaSim",
    "FakeHardwareError",
    "franka_sim_python",
    "franka_sim_missing",
    "tcp_listening",
    "import_pyrealsense2",
    "Intrinsics",
    "SoftwareRealSense",
    "FakeRealSenseHub",
    "FrameFeeder",
    "pattern_source",
    "TwinCameraSource",
    "FR3_MJCF",
    "ARM_PORT",
    "GRIPPER_PORT",
]
