"""Process lifetime and start-up checks of the live graph (issue 15), with real processes.

- every child (node processes, the franka-sim a bridge starts) ends when its parent dies, by
  SIGKILL or SIGTERM, checked by PID with a bounded wait;
- a franka-sim or node left from another run is refused with a one-line error naming the PID
  (``reuse_simulator:=true`` uses the simulator instead);
- bad launch arguments / node parameters fail with one line and a non-zero exit before any
  node starts.

Waits are bounded hang guards (generous, for a loaded machine), not timing verdicts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_HOME", tempfile.mkdtemp(prefix="twinrank-roshome-"))
_ament = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
if sys.prefix not in _ament:
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([sys.prefix, *_ament])

pytest.importorskip("rclpy", reason="ROS 2 from PyPI: pip install -e '.[ros]' (make install)")

from twin.live import fake_hardware as fh  # noqa: E402
from twin.live.graph import GraphError, NodeDesc  # noqa: E402
from twin.live.runner import GraphRunner  # noqa: E402

pytestmark = pytest.mark.timeout(600)
GONE_TIMEOUT_S = 60.0  # bounded wait for a process to end (a loaded machine stops nodes slowly)
UP_TIMEOUT_S = 180.0  # bounded wait for a node to come up


def _env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _domain() -> int:
    return 150 + (os.getpid() + int(time.monotonic() * 1000)) % 80


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = GONE_TIMEOUT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed test (by PID, the processes this test started)."""
    for p in pids:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


class Output:
    """Collects a process's merged output lines from a thread; ``wait_for`` a text."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._th = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._th.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, *needles: str, timeout: float = UP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {needles}; output:\n{self.text()[-3000:]}")


EMBEDDED = """
import sys, time
from twin.live.graph import NodeDesc
from twin.live.runner import GraphRunner
nodes = [NodeDesc("twin_sync", "twin_sync", {"task": "reach", "render_rate_hz": 0.0}),
         NodeDesc("recorder", "recorder", {"bag_dir": sys.argv[1]})]
GraphRunner(nodes, mode="process").start()  # no signal handlers: SIGTERM ends this program at once
print("GRAPH STARTED", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    "how,sig",
    [("cli", signal.SIGKILL), ("cli", signal.SIGTERM), ("embedded", signal.SIGTERM), ("embedded", signal.SIGKILL)],
)
def test_nodes_end_when_the_process_that_started_them_dies(how, sig, tmp_path):
    """`twinrank live run` (python -m twin.live.runner) or a program embedding GraphRunner
    starts twin_sync and the recorder as processes; killing it ends both."""
    if how == "cli":
        cmd = [
            sys.executable,
            "-m",
            "twin.live.runner",
            "hardware:=false",
            "render_rate_hz:=0",
            f"bag_dir:={tmp_path}",
            "--mode",
            "process",
        ]
    else:
        cmd = [sys.executable, "-c", EMBEDDED, str(tmp_path)]
    proc = subprocess.Popen(cmd, env=_env(_domain()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT))
    out = Output(proc)
    nodes: list[int] = []
    try:
        out.wait_for("twin_sync up", "recorder up")
        nodes = children(proc.pid)
        assert len(nodes) == 2, (nodes, out.text()[-2000:])
        os.kill(proc.pid, sig)
        proc.wait(timeout=GONE_TIMEOUT_S)
        left = wait_gone(nodes)
        assert not left, f"nodes {left} still running {GONE_TIMEOUT_S} s after their parent got {sig.name}"
        print(f"\n{how} {sig.name}: nodes {nodes} ended with their parent")
    finally:
        kill_all([proc.pid, *nodes])


def test_nodes_end_when_their_parent_dies_during_start_up(tmp_path):
    """The parent killed while the nodes are still importing (before they can watch it)."""
    cmd = [sys.executable, "-m", "twin.live.runner", "hardware:=false", "render_rate_hz:=0", f"bag_dir:={tmp_path}"]
    proc = subprocess.Popen(
        cmd, env=_env(_domain()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT)
    )
    nodes: list[int] = []
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while len(nodes) < 2 and time.monotonic() < deadline:
            nodes = children(proc.pid)
            time.sleep(0.02)
        assert len(nodes) == 2, nodes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert not wait_gone(nodes), f"nodes {nodes} outlived their parent"
    finally:
        kill_all([proc.pid, *nodes])


def test_same_node_left_from_another_run_is_refused(tmp_path):
    env = _env(_domain())
    cmd = [sys.executable, "-m", "twin.live.twin_sync", "--ros-args", "-p", "render_rate_hz:=0.0"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT))
    out = Output(first)
    try:
        out.wait_for("twin_sync up")
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=UP_TIMEOUT_S, cwd=str(ROOT))
        err = second.stderr.strip().splitlines()
        print(f"\nrefused: {err}")
        assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
        assert len(err) == 1 and str(first.pid) in err[0] and "ROS_DOMAIN_ID" in err[0], err
        # another domain is another graph: no conflict there
        other = _env(int(env["ROS_DOMAIN_ID"]) + 1)
        third = subprocess.Popen(cmd, env=other, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT))
        out3 = Output(third)
        try:
            out3.wait_for("twin_sync up")
        finally:
            third.send_signal(signal.SIGINT)
            third.wait(timeout=GONE_TIMEOUT_S)
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=GONE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            first.kill()


# ---- franka-sim ---------------------------------------------------------------------------------
def _sim_pids() -> list[int]:
    return fh.listener_pids("127.0.0.1", fh.ARM_PORT)


def _bridge(env: dict[str, str], *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "twin.live.franka_bridge",
        "--ros-args",
        "-p",
        "use_fake_hardware:=true",
        "-p",
        "use_gripper:=false",
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_franka_sim_ends_when_the_bridge_that_started_it_dies(sig):
    why = fh.franka_sim_unavailable()
    if why:
        pytest.skip(why)
    bridge = _bridge(_env(_domain()))
    out = Output(bridge)
    sims: list[int] = []
    try:
        out.wait_for("connected to 127.0.0.1")
        sims = _sim_pids()
        assert len(sims) == 1 and sims[0] in children(bridge.pid), (sims, children(bridge.pid))
        os.kill(bridge.pid, sig)
        bridge.wait(timeout=GONE_TIMEOUT_S)
        left = wait_gone(sims)
        assert not left, f"franka-sim {left} still running after franka_bridge got {sig.name}"
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while fh.tcp_listening("127.0.0.1", fh.ARM_PORT) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fh.tcp_listening("127.0.0.1", fh.ARM_PORT), "port 1337 still taken"
        print(f"\nbridge {sig.name}: franka-sim {sims} ended, port 1337 free")
    finally:
        kill_all([bridge.pid, *sims])


def test_simulator_left_from_another_run_is_refused_unless_reused(tmp_path):
    why = fh.franka_sim_unavailable()
    if why:
        pytest.skip(why)
    stale = fh.FrankaSim("127.0.0.1", log_path=tmp_path / "stale-sim.log").start()
    env = _env(_domain())
    started: list[int] = []
    try:
        refused = _bridge(env)
        started.append(refused.pid)
        out = Output(refused)
        refused.wait(timeout=UP_TIMEOUT_S)
        time.sleep(0.2)
        errors = [line for line in out.lines if line.startswith("error:")]
        print(f"\nrefused: {errors}")
        assert refused.returncode == 2, out.text()[-2000:]
        assert len(errors) == 1 and "Traceback" not in out.text(), out.text()[-2000:]
        assert f"PID {stale.pid}" in errors[0] and "1337" in errors[0] and "reuse_simulator:=true" in errors[0]
        assert stale.running  # refused, not killed

        reused = _bridge(env, "-p", "reuse_simulator:=true")
        started.append(reused.pid)
        out2 = Output(reused)
        try:
            out2.wait_for("reusing the simulator", "connected to 127.0.0.1")
        finally:
            reused.send_signal(signal.SIGINT)
            reused.wait(timeout=GONE_TIMEOUT_S)
        assert stale.running, "the bridge stopped a simulator it did not start"
    finally:
        kill_all(started)
        stale.stop()


# ---- arguments are validated before anything starts ---------------------------------------------
def _live_processes(domain: int) -> list[int]:
    """twin.live node processes in ROS domain ``domain``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if b"twin.live." in cmd and f"ROS_DOMAIN_ID={domain}\0".encode() in environ + b"\0":
            found.append(int(entry))
    return found


@pytest.mark.parametrize(
    "args,needle",
    [
        (["task:=no_such_task"], "no_such_task"),
        (["checkpoint:=/no/such/checkpoint"], "/no/such/checkpoint"),
        (["use_fake_hardware:=true", "cameras:=cam_nowhere"], "cam_nowhere"),
        (["sync_rate_hz:=-5"], "sync_rate_hz"),
        (["cameras:=cam_left=bad serial!"], "serial"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_start_nothing(args, needle):
    domain = _domain()
    r = subprocess.run(
        [sys.executable, "-m", "twin.live.runner", *args],
        env=_env(domain),
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S / 3,
        cwd=str(ROOT),
    )
    err = r.stderr.strip().splitlines()
    print(f"\n{args}: {err}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not _live_processes(domain)


def test_graph_runner_validates_every_node_before_starting_any(tmp_path):
    good = NodeDesc("recorder", "recorder", {"bag_dir": str(tmp_path)})
    for bad, needle in (
        (NodeDesc("twin_sync", "twin_sync", {"task": "no_such_task"}), "no_such_task"),
        (NodeDesc("policy_runner", "policy_runner", {"checkpoint": str(tmp_path / "none")}), "none"),
        (NodeDesc("twin_sync", "twin_sync", {"object_gain": 2.0}), "object_gain"),
        (NodeDesc("recorder_2", "recorder", {"domain": "mars"}), "mars"),
    ):
        runner = GraphRunner([good, bad], mode="process", env=_env(_domain()))
        with pytest.raises(GraphError, match=needle) as info:
            runner.start()
        assert "\n" not in str(info.value)
        assert not runner.procs, "a node was started before the graph was validated"


def test_node_with_bad_parameter_exits_with_one_line():
    """Started on its own (as ros2 launch would, with parameters it did not validate)."""
    r = subprocess.run(
        [sys.executable, "-m", "twin.live.twin_sync", "--ros-args", "-p", "task:=no_such_task"],
        env=_env(_domain()),
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        cwd=str(ROOT),
    )
    err = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    print(f"\n{err}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(err) == 1 and "no_such_task" in err[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
