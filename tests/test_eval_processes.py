"""Evaluator processes: torch threads per worker, and workers that end with their parent.

Real worker processes, real Ray (inside a private network namespace only), real MuJoCo.
The "parent dies" tests start a campaign in a child process (the driver), wait until its
workers are blocked inside ``policy.act`` (a policy that writes a marker file and then
sleeps for an hour), list the driver's descendants from /proc, kill the driver and wait
for every one of them to be gone. A worker that only noticed its parent at its next env
step would sleep on; one that lingers for any other reason is caught the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from evaluator import InlineExecutor, LocalExecutor
from evaluator.worker import CheckpointRef, WorkUnit
from policies import PolicySpec, make_policy, save_checkpoint
from policies.runtime import ENV_VAR
from twin.env import TwinEnv

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
#: seconds to wait for the workers to be running (process start-up on a busy machine)
START_TIMEOUT_S = 600.0
#: seconds a killed driver's processes get to disappear; they end within a second after the
#: kill (PR_SET_PDEATHSIG, reaper); without the fixes they slept on for an hour (blocked
#: workers) or ~60 s (Ray's agents, until their GCS client gave up)
GONE_TIMEOUT_S = 30.0


def _private_network() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


needs_private_net = pytest.mark.skipif(
    not _private_network(),
    reason="Ray listens on every interface: this test runs only inside a private network "
    "namespace (make test / scripts/isolated)",
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    env = TwinEnv("reach")
    spec = PolicySpec.from_env(env, ["state"])
    env.close()
    torch.manual_seed(0)
    return save_checkpoint(
        make_policy("mlp", {"hidden_sizes": [16, 16]}, spec), tmp_path_factory.mktemp("ckpt") / "mlp", training_step=0
    )


def _unit(ckpt: Path, uid: str = "threads/reach/0") -> WorkUnit:
    ref = CheckpointRef(checkpoint_id="threads", label="threads", path=str(ckpt), task="reach")
    return WorkUnit(
        unit_id=uid, checkpoint=ref, task="reach", episodes=[("nominal", 1, {})], run=[True], batch_size=1, max_steps=3
    )


def _done_payloads(ex, units: list[WorkUnit]) -> list[dict]:
    got: list[dict] = []

    def handle(kind: str, unit: WorkUnit, payload: dict) -> None:
        assert kind != "error", payload
        if kind == "done":
            got.append(payload)

    ex.run(units, handle)
    assert len(got) == len(units)
    return got


# ---------------------------------------------------------------------------------------------
# torch threads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, expected", [(None, 1), ("2", 2)])
def test_worker_process_runs_with_the_role_thread_count(ckpt, monkeypatch, setting, expected):
    if setting is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, setting)
    with LocalExecutor(workers=1) as ex:
        (done,) = _done_payloads(ex, [_unit(ckpt)])
        assert done["pid"] in ex.worker_pids and done["pid"] != os.getpid()
    assert done["torch_threads"] == expected


def test_inline_executor_uses_worker_threads_and_restores_them(ckpt, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with InlineExecutor() as ex:
            (done,) = _done_payloads(ex, [_unit(ckpt)])
        assert done["torch_threads"] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_thread_setting_is_refused_before_workers_start(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ValueError, match=rf"{ENV_VAR}='lots' is not a positive integer"):
        LocalExecutor(workers=1)


@needs_private_net
def test_ray_actors_run_with_the_drivers_thread_setting(ckpt, monkeypatch):
    pytest.importorskip("ray", reason="the Ray executor needs the 'ray' package")
    from evaluator import RayExecutor

    monkeypatch.setenv(ENV_VAR, "2")
    with RayExecutor(workers=1, init_kwargs={"_node_ip_address": "127.0.0.1"}) as ex:
        (done,) = _done_payloads(ex, [_unit(ckpt)])
    assert done["torch_threads"] == 2 and done["pid"] != os.getpid()


# ---------------------------------------------------------------------------------------------
# workers end with their parent
# ---------------------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """{pid: (parent pid, state, start time)} from /proc."""
    out: dict[int, tuple[int, str, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), fields[0], int(fields[19]))
    return out


def _descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below ``root``."""
    table = _proc_table()
    found: dict[int, int] = {}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, start) in table.items():
            if pid not in found and (ppid == root or ppid in found):
                found[pid] = start
                grew = True
    return found


def _still_running(procs: dict[int, int]) -> dict[int, str]:
    """Those of ``procs`` still running (same start time, not a zombie): {pid: command line}."""
    table = _proc_table()
    out: dict[int, str] = {}
    for pid, start in procs.items():
        entry = table.get(pid)
        if entry is not None and entry[2] == start and entry[1] != "Z":
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                out[pid] = "?"
    return out


HELPERS = '''
import os
import time


class BlockingAct:
    """A policy function that writes acting-<pid> into ``markers`` and then sleeps for an hour."""

    def __init__(self, markers):
        self.markers = markers

    def __call__(self, obs):
        open(os.path.join(self.markers, "acting-%d" % os.getpid()), "w").close()
        time.sleep(3600)
        raise RuntimeError("still running an hour later")
'''

DRIVER = """
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kill_helpers


def main():
    from evaluator import EvalSpec, LocalExecutor, RayExecutor, evaluate, policy_ref
    from policies import CallablePolicy, PolicySpec
    from policies.checkpoint import read_manifest

    kind, ckpt, out, markers = sys.argv[1:5]
    spec = EvalSpec(name="kill", tasks=["reach"], conditions=["nominal"], episodes_per_condition=8,
                    seed_start=700, batch_size=4, max_steps=5).validate()
    pspec = PolicySpec.from_dict(read_manifest(ckpt)["spec"])
    # the checkpoint's two units run first, then each worker blocks in the policy's act()
    refs = [ckpt, policy_ref(CallablePolicy(kill_helpers.BlockingAct(markers), pspec), "blocks")]
    if kind == "ray":
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(kill_helpers)
        ex = RayExecutor(workers=2, init_kwargs={"_node_ip_address": "127.0.0.1"})
    else:
        ex = LocalExecutor(workers=2)
    evaluate(refs, spec, out, executor=ex, videos=False, plots=False)
    print("the campaign finished: the blocking policy did not block", file=sys.stderr)


if __name__ == "__main__":
    main()
"""


def _kill_driver_and_check(kind: str, sig: int, ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "kill_helpers.py").write_text(textwrap.dedent(HELPERS))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    markers = tmp_path / "markers"
    markers.mkdir()
    procs: dict[int, int] = {}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), kind, str(ckpt), str(tmp_path / "out"), str(markers)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(list(markers.iterdir())) < 2:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers never started acting"
            time.sleep(0.2)
        procs = _descendants(driver.pid)
        acting = {int(p.name.split("-")[1]) for p in markers.iterdir()}
        assert acting <= set(procs), (acting, procs)  # the blocked workers are the driver's descendants
        os.kill(driver.pid, sig)
        assert driver.wait(timeout=60) == -sig
        deadline = time.monotonic() + GONE_TIMEOUT_S
        left = _still_running(procs)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _still_running(procs)
        assert not left, f"still running {GONE_TIMEOUT_S:.0f} s after the driver got signal {sig}: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in _still_running(procs):  # clean up after a failure
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_local_workers_end_when_the_driver_is_killed(ckpt, tmp_path, sig):
    _kill_driver_and_check("local", sig, ckpt, tmp_path)


@needs_private_net
def test_local_ray_ends_when_the_driver_is_killed(ckpt, tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs the 'ray' package")
    _kill_driver_and_check("ray", signal.SIGKILL, ckpt, tmp_path)


def test_worker_exits_at_once_when_its_parent_is_already_gone():
    """A worker whose parent died before it armed PR_SET_PDEATHSIG (re-parented already)."""
    code = textwrap.dedent("""
        import os, sys
        from evaluator.worker import die_with_parent
        die_with_parent(int(sys.argv[1]))
        print("still running")
    """)
    gone = max(_proc_table()) + 100_000  # no process has this PID, so it is not our parent
    r = subprocess.run(
        [sys.executable, "-c", code, str(gone)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 1 and "still running" not in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    r = subprocess.run(
        [sys.executable, "-c", code + "import time; time.sleep(1.5)\n", str(os.getpid())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0 and "still running" in r.stdout, r.stderr[-2000:]  # the parent check passes
