"""Twin core: env-layer overhead vs raw mj_step, render FPS, point-cloud extraction time.

Targets (issue 2): the env layer costs at most 20% over raw physics, i.e.
env_steps/s * substeps >= raw mj_step/s / 1.2 on one core, measured in the same run on the
same compiled model, start state and control sequence. Both loops are timed in process CPU
time (best of 3), which other load on the machine disturbs far less than wall time.
"""

from __future__ import annotations

import os
import time

import mujoco
import numpy as np

from twin.env import TwinEnv
from twin.render import Renderer, fuse_point_clouds


def _pin_one_core() -> None:
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass


def env_overhead(task: str = "mug_to_sink", steps: int = 400, repeats: int = 3) -> dict[str, float]:
    env = TwinEnv(task)  # state observations, ee_delta control (IK every step)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, size=(steps, 7)).astype(np.float32)
    actions[:, 6] = 1.0
    env.cfg.terminations.max_steps = steps + 1
    env_times, raw_times = [], []
    for _ in range(repeats):
        env.reset(seed=0)
        ctrls = []
        t0 = time.process_time()
        for a in actions:
            env.step(a)
            ctrls.append(env.sim.data.ctrl.copy())
        env_times.append(time.process_time() - t0)
        # Raw physics: the same compiled model, start state and control sequence, no env layer.
        env.reset(seed=0)
        m, d = env.sim.model, env.sim.data
        t0 = time.process_time()
        for c in ctrls:
            d.ctrl[:] = c
            for _ in range(env.nsub):
                mujoco.mj_step(m, d)
        raw_times.append(time.process_time() - t0)
    env_rate = steps / min(env_times)
    raw_rate = steps * env.nsub / min(raw_times)
    env.close()
    return {
        "env_steps_per_s": env_rate,
        "substeps": env.nsub,
        "raw_mj_steps_per_s": raw_rate,
        "env_physics_equiv_steps_per_s": env_rate * env.nsub,
        "overhead": raw_rate / (env_rate * env.nsub) - 1.0,
    }


def render_fps(task: str = "mug_to_sink", frames: int = 20) -> dict[str, float]:
    env = TwinEnv(task)
    env.reset(seed=0)
    out: dict[str, float] = {}
    cam = env.camera_names()[0]
    for w, h in ((128, 128), (640, 480)):
        r = Renderer(env.sim.model, w, h)
        r.render(env.sim.data, cam)  # warm-up
        t0 = time.perf_counter()
        for _ in range(frames):
            r.render(env.sim.data, cam, rgb=True)
        out[f"rgb_fps_{w}x{h}"] = frames / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(frames):
            r.render(env.sim.data, cam, rgb=True, depth=True)
        out[f"rgbd_fps_{w}x{h}"] = frames / (time.perf_counter() - t0)
        if (w, h) == (640, 480):
            frame = r.render(env.sim.data, cam, rgb=True, depth=True)
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            for _ in range(frames):
                pc = fuse_point_clouds([frame.point_cloud()], env.scene.workspace, 2048, rng)
            out["point_cloud_ms_640x480"] = 1000 * (time.perf_counter() - t0) / frames
            assert pc.shape == (2048, 6)
        r.close()
    env.close()
    return out


def main() -> None:
    _pin_one_core()
    o = env_overhead()
    print(f"env steps/s (mug_to_sink, state obs, ee_delta, {o['substeps']} substeps/step): {o['env_steps_per_s']:.1f}")
    print(
        f"raw mj_step/s, same model: {o['raw_mj_steps_per_s']:.0f}; env equivalent: "
        f"{o['env_physics_equiv_steps_per_s']:.0f}"
    )
    verdict = "meets" if o["overhead"] <= 0.20 else "MISSES"
    print(f"env-layer overhead over raw physics: {100 * o['overhead']:.1f}% ({verdict} the <= 20% target)")
    r = render_fps()
    for k, v in r.items():
        print(f"{k}: {v:.1f}")
