"""Benchmark of twin_sync (not a timed test): sync latency, sustained update rate, CPU use.

``python -m twin.live.bench --rate 1000 --seconds 60`` (or ``twinrank live bench``) starts
twin_sync (and the recorder) as its own process (its registered executable when the package is registered,
else ``python -m twin.live.twin_sync``) and publishes ``/joint_states`` at ``--rate`` from
this process over loopback / shared memory. Every published state carries a sequence number
(encoded in joint 7: ``q7 = base + seq * 1e-7``), so each ``/twin/joint_states`` tells which
sample the twin had applied. Reported:

- ``publish -> twin state`` latency: publish time of the applied sample to the arrival of
  the twin state that shows it (one DDS hop each way, plus the tick quantisation), p50/p99;
- the node's own stamp -> applied latency (``/twin/desync`` ``apply_latency_s``, sampled
  at the desync rate), p50/p99;
- sustained twin update rate (``/twin/joint_states`` per second) and applied samples;
- messages published / dropped by the keep-last subscription (the twin only needs the newest);
- CPU use per node process (user + system time / wall time, from /proc): twin_sync, and the
  recorder (``--no-record`` leaves it out) recording the whole run as one episode; how many
  joint states the bag holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BASE = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
SEQ_SCALE = 1e-7


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    rate: float = 1000.0, seconds: float = 60.0, sync_rate: float = 100.0, task: str = "reach", record: bool = True
) -> dict[str, Any]:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_HOME", tempfile.mkdtemp(prefix="twinrank-bench-"))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from twin.live.graph import NodeDesc
    from twin.live.interfaces import Desync, pack_joints
    from twin.live.runner import GraphRunner, ros_env

    descs = [NodeDesc("twin_sync", "twin_sync", {"task": task, "sync_rate_hz": sync_rate, "render_rate_hz": 0.0})]
    bag_dir = Path(tempfile.mkdtemp(prefix="twinrank-bench-bags-"))
    if record:
        descs.append(NodeDesc("recorder", "recorder", {"task": task, "bag_dir": str(bag_dir)}))
    env = ros_env()
    try:
        from twin.live.ament import check_ament

        installed = not check_ament()
    except Exception:
        installed = False
    graph = GraphRunner(descs, mode="process", env=env, installed=installed)
    rclpy.init()
    node = rclpy.create_node("twin_sync_bench")
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(JointState, "/joint_states", qos)
    sent_t: dict[int, float] = {}
    twin_lat: list[float] = []
    twin_times: list[float] = []
    apply_lat: list[float] = []
    last_seq = [-1]

    def on_twin(msg: JointState) -> None:
        t = time.perf_counter()
        twin_times.append(t)
        seq = int(round((msg.position[6] - BASE[6]) / SEQ_SCALE))
        if seq != last_seq[0] and seq in sent_t:
            last_seq[0] = seq
            twin_lat.append(t - sent_t[seq])

    def on_desync(msg: String) -> None:
        d = Desync.from_json(msg.data)
        if d.apply_latency_s == d.apply_latency_s:
            apply_lat.append(d.apply_latency_s)

    node.create_subscription(JointState, "/twin/joint_states", on_twin, qos)
    node.create_subscription(String, "/twin/desync", on_desync, 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()
    graph.start()
    try:
        deadline = time.monotonic() + 60.0
        while pub.get_subscription_count() < len(descs) or node.count_publishers("/twin/joint_states") < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not come up within 60 s")
            time.sleep(0.05)
        time.sleep(1.0)
        if record:
            _trigger(node, "/recorder/start_episode")
        pids = {n: p.pid for n, p in graph.procs.items()}
        cpu0, wall0 = {n: _cpu_seconds(p) for n, p in pids.items()}, time.monotonic()
        twin_times.clear()
        period = 1.0 / rate
        nxt = time.perf_counter()
        end = nxt + seconds
        seq = 0
        msg = JointState()
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            q = BASE.copy()
            q[6] += seq * SEQ_SCALE
            msg.name, pos = pack_joints(q, 0.08)
            msg.position = pos
            msg.header.stamp = node.get_clock().now().to_msg()
            sent_t[seq] = time.perf_counter()
            pub.publish(msg)
            seq += 1
            nxt += period
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        time.sleep(0.5)
        cpu = {n: (_cpu_seconds(p) - cpu0[n]) / (time.monotonic() - wall0) for n, p in pids.items()}
        recorded = None
        if record:
            _trigger(node, "/recorder/end_episode_success")
            _trigger(node, "/recorder/close_bag")
            from twin.live.realdata import bag_info

            bags = [b for b in bag_dir.iterdir() if b.is_dir()]
            if bags:
                info = bag_info(bags[0])
                recorded = {
                    "joint_states": info["episodes"][0]["joint_states"],
                    "of_published": seq,
                    "bag_mb": round(sum(f.stat().st_size for f in bags[0].iterdir()) / 1e6, 2),
                }
        span = (twin_times[-1] - twin_times[0]) if len(twin_times) > 1 else float("nan")
        lat = np.asarray(twin_lat[5:])
        app = np.asarray(apply_lat[2:])
        result = {
            "publish_rate_hz": rate,
            "seconds": seconds,
            "published": seq,
            "achieved_publish_rate_hz": seq / seconds,
            "sync_rate_hz": sync_rate,
            "twin_updates_per_s": (len(twin_times) - 1) / span if span == span and span > 0 else 0.0,
            "samples_applied": len(twin_lat),
            "publish_to_twin_state_ms": {
                "p50": float(np.median(lat) * 1e3),
                "p99": float(np.percentile(lat, 99) * 1e3),
                "max": float(lat.max() * 1e3),
            }
            if len(lat)
            else None,
            "stamp_to_applied_ms": {"p50": float(np.median(app) * 1e3), "p99": float(np.percentile(app, 99) * 1e3)}
            if len(app)
            else None,
            "cpu_fraction_per_node": cpu,
            "cpus": os.cpu_count(),
            "recorded": recorded,
        }
    finally:
        import shutil

        shutil.rmtree(bag_dir, ignore_errors=True)
        graph.stop()
        ex.shutdown(timeout_sec=2.0)
        spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.shutdown()
    return result


def _trigger(node: Any, name: str, timeout: float = 20.0) -> None:
    from std_srvs.srv import Trigger

    client = node.create_client(Trigger, name)
    if not client.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"service {name} not available")
    fut = client.call_async(Trigger.Request())
    deadline = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not fut.done() or not fut.result().success:
        raise RuntimeError(f"{name} failed: {fut.result().message if fut.done() else 'timeout'}")
    node.destroy_client(client)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twin.live.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="/joint_states publish rate (Hz)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sync-rate", type=float, default=100.0, help="twin_sync sync_rate_hz")
    ap.add_argument("--task", default="reach")
    ap.add_argument("--no-record", action="store_true", help="without the recorder node")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    res = run(a.rate, a.seconds, a.sync_rate, a.task, record=not a.no_record)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
