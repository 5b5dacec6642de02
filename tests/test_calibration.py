"""Real-to-sim calibration (selection/calibration.py, `twinrank calibrate`): logs written by a
same-engine proxy-real cell whose shifts are known (real MuJoCo, a real rosbag2 bag), replayed
in the twin; the known actuation latency is recovered, the calibrated suite is what the
evaluator runs, and bad logs get clear errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from evaluator.spec import EvalSpec
from selection.calibration import CalibrationError, calibrate
from selection.proxy_real import ProxyRealDomain, record_logs
from selection.realdata import read_bag
from twin.env import TwinEnv
from twin.perturbations import PerturbationSuite

pytestmark = pytest.mark.slow

TASK = "box_to_shelf"
LATENCY = 0.03  # s, the proxy cell's (the twin's nominal is 0)
DOMAIN = f"""name: proxy-real
seed_start: 900000
episodes: 6
suite:
  name: calibration-test
  factors:
    friction:          {{kind: SA, distribution: scale, range: [0.65, 0.65]}}
    mass:              {{kind: SA, distribution: scale, range: [1.4, 1.4]}}
    actuation_latency: {{kind: SA, distribution: value, range: [{LATENCY}, {LATENCY}]}}
"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    (root / "domain.yaml").write_text(DOMAIN)
    return record_logs(TASK, root / "bag", domain=ProxyRealDomain.load(root / "domain.yaml"), episodes=6)


@pytest.fixture(scope="module")
def latency_fit(logs):
    # positions only: with mass and friction left nominal their torque misfit would swamp latency's
    return calibrate(read_bag(logs, images=False), TASK, params=["actuation_latency"], max_evals=20, effort_weight=0)


def test_the_known_latency_is_recovered_and_the_residual_falls(latency_fit):
    est = latency_fit.estimates["actuation_latency"]
    print(
        f"\nlatency {est.value * 1000:.1f} ms (truth {LATENCY * 1000:.0f}), residual "
        f"{latency_fit.residual_before * 1000:.2f} -> {latency_fit.residual_after * 1000:.2f} mm, "
        f"{latency_fit.evaluations} evaluations, {latency_fit.wall_s:.0f} s"
    )
    assert est.identified, est.note
    assert abs(est.value - LATENCY) <= 0.010  # the bound: +-10 ms
    # mass and friction stay at nominal here, so part of the gap remains; latency explains about half
    assert latency_fit.residual_after <= 0.7 * latency_fit.residual_before
    assert latency_fit.episodes == 6 and not latency_fit.skipped
    # this cell places the box where the twin does: no start offset is claimed
    box = latency_fit.placement["box"]
    print(box.text())
    assert box.n == 6 and not box.identified and max(abs(box.mean[0]), abs(box.mean[1])) < 0.002
    assert "object_pose" not in latency_fit.condition_values()


SHIFT = (0.02, -0.015, 0.1)  # m, m, rad: where this cell puts the box relative to the twin
SHIFTED = f"""name: proxy-real
seed_start: 910000
episodes: 4
suite:
  name: placement-test
  factors:
    object_pose: {{kind: SA, distribution: offset, range: [0.0, 0.0], yaw_range: [0.0, 0.0],
                  fixed: [[{SHIFT[0]}, {SHIFT[1]}, {SHIFT[2]}], [{SHIFT[0]}, {SHIFT[1]}, {SHIFT[2]}],
                          [{SHIFT[0]}, {SHIFT[1]}, {SHIFT[2]}], [{SHIFT[0]}, {SHIFT[1]}, {SHIFT[2]}]]}}
"""


def test_a_systematic_object_start_offset_is_recovered_and_the_calibrated_twin_starts_there(tmp_path):
    """A cell that puts the box 2 cm / -1.5 cm / 5.7 deg off the twin's placement, every
    episode: the offset is identified (to 1 mm / 0.3 deg), the calibrated suite fixes
    object_pose at it, and the twin run with that suite starts the box where the cell did."""
    from selection.calibration import CalibrationResult, _action_dim, replay_episodes
    from selection.placement import placement_offsets
    from twin.tasks import get_task_class

    (tmp_path / "domain.yaml").write_text(SHIFTED)
    bag = record_logs(TASK, tmp_path / "bag", domain=ProxyRealDomain.load(tmp_path / "domain.yaml"), episodes=4)
    episodes = read_bag(bag, images=False)
    usable, skipped = replay_episodes(episodes, TASK, _action_dim(TASK, get_task_class(TASK).expert_mode))
    assert len(usable) == 4 and not skipped
    starts = [(ep.seed, {o: p[0] for o, p in ep.objects.items()}) for ep in usable]
    off = placement_offsets(starts, TASK, ["box"])["box"]
    print(f"\n{off.text()}")
    assert off.identified and off.n == 4
    assert np.allclose(off.mean[:2], SHIFT[:2], atol=0.001) and abs(off.mean[2] - SHIFT[2]) < np.radians(0.3)
    # the calibrated twin starts the box at the cell's pose
    res = CalibrationResult(TASK, [], {}, 0.0, 0.0, [], [], 4, [], 0, 0.0, placement={"box": off})
    suite_path = tmp_path / "calibrated_suite.yaml"
    suite_path.write_text(res.suite().to_yaml())
    suite = PerturbationSuite.from_yaml(suite_path, task=TASK)
    env = TwinEnv(TASK, suite=suite, render_mode=None)
    try:
        for ep, (_, logged) in zip(usable, starts, strict=True):
            env.reset(seed=ep.seed)  # a fixed factor: every sample of the suite is the calibrated value
            twin_box = env.sim.body_pose("box")
            assert np.linalg.norm(twin_box[:2] - logged["box"][:2]) < 0.0015, (twin_box, logged["box"])
    finally:
        env.close()


def test_latency_mass_and_friction_are_recovered_from_paths_and_joint_torques(logs):
    """The issue's recovery bounds (latency +-10 ms, friction and mass +-15 %) from 6 episodes
    whose logs carry the arm's joint torques, as a Franka's /joint_states does; from the TCP
    path alone mass is not identifiable here (mass 1.0 with friction 0.65 fits it as well)."""
    eps = read_bag(logs, images=False)
    assert np.isfinite(eps[0].joint_effort[:, :7]).all()  # the recorder logged them
    res = calibrate(eps, TASK, max_evals=160, workers=2)  # each generation replayed in 2 processes
    import multiprocessing

    assert not multiprocessing.active_children()  # the replay workers are gone
    est = res.estimates
    print(
        "\n"
        + "\n".join(e.text() for e in est.values())
        + f"\nresidual {res.residual_before * 1000:.2f} -> {res.residual_after * 1000:.2f} mm, torques "
        f"{res.effort_before:.2f} -> {res.effort_after:.2f} N m, {res.evaluations} evaluations, {res.wall_s:.0f} s"
    )
    assert res.effort_weight > 0 and res.effort_after < 0.5 * res.effort_before
    assert abs(est["actuation_latency"].value - LATENCY) <= 0.010
    assert abs(est["mass"].value / 1.4 - 1) <= 0.15 and abs(est["friction"].value / 0.65 - 1) <= 0.15
    assert all(e.identified for e in est.values()), [e.note for e in est.values()]


def test_the_calibrated_suite_is_what_the_evaluator_runs(latency_fit, tmp_path):
    path = tmp_path / "calibrated_suite.yaml"
    path.write_text(latency_fit.suite().to_yaml())
    suite = PerturbationSuite.from_yaml(path, task=TASK)
    spec = EvalSpec(name="calibrated", tasks=[TASK], suite=str(path), conditions=["combined"], episodes_per_condition=2)
    spec.validate()
    env = TwinEnv(TASK, suite=suite, render_mode=None)
    try:
        env.reset(seed=3)
        want = latency_fit.estimates["actuation_latency"].value
        assert env.condition.values["actuation_latency"] == pytest.approx(want)
        assert env.sim.latency_substeps == round(want / env.scene.physics.timestep)
    finally:
        env.close()


def test_bad_logs_get_errors_that_name_the_problem(logs):
    eps = read_bag(logs, images=False)
    with pytest.raises(CalibrationError, match="is of task 'box_to_shelf', not 'mug_to_sink'"):
        calibrate(eps, "mug_to_sink", params=["actuation_latency"], max_evals=4)
    renamed = [dataclasses.replace(e, joint_names=tuple(f"j{i}" for i in range(9))) for e in eps]
    with pytest.raises(CalibrationError, match="joint names"):
        calibrate(renamed, TASK, params=["actuation_latency"], max_evals=4)
    no_actions = [dataclasses.replace(e, actions=None) for e in eps]
    with pytest.raises(CalibrationError, match="no actions logged"):
        calibrate(no_actions, TASK, params=["actuation_latency"], max_evals=4)
    with pytest.raises(CalibrationError, match="unknown calibration parameter"):
        calibrate(eps, TASK, params=["gravity"], max_evals=4)
    # partial logs: what can be replayed is, and the rest is named
    part = [dataclasses.replace(eps[0], actions=None), *eps[1:3]]
    res = calibrate(part, TASK, params=["actuation_latency"], max_evals=6)
    assert res.episodes == 2 and len(res.skipped) == 1 and "no actions logged" in res.skipped[0]
    assert np.isfinite(res.residual_after)


def test_the_command_writes_suite_spec_report_and_fails_cleanly(logs, tmp_path):
    exe = [sys.executable, "-m", "twinrank.cli", "calibrate"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    ok = subprocess.run(
        [*exe, TASK, "--logs", str(logs), "--out", str(out), "--params", "actuation_latency", "--max-evals", "12"]
        + ["--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "replay residual" in ok.stdout and "MLflow run" in ok.stdout
    spec = yaml.safe_load((out / "calibrated_spec.yaml").read_text())
    assert spec["conditions"] == ["combined"] and Path(spec["suite"]).is_file()
    assert (out / "calibration.json").is_file() and (out / "residuals.png").stat().st_size > 5000
    bad = subprocess.run(
        [*exe, "mug_to_sink", "--logs", str(logs), "--out", str(tmp_path / "bad"), "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    err = [line for line in bad.stdout.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "is of task 'box_to_shelf', not 'mug_to_sink'" in err[0], bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_a_replay_worker_killed_mid_fit_loses_nothing(logs):
    """A replay worker SIGKILLed during the fit (after the first CMA-ES generation): the rest is
    replayed in the calling process and the estimates are the ones a single process gets."""
    import multiprocessing
    import os
    import signal

    eps = read_bag(logs, images=False)[:3]
    params = ["actuation_latency", "friction"]
    ref = calibrate(eps, TASK, params=params, max_evals=16, workers=1)
    said: list[str] = []
    killed: list[int] = []

    def progress(desc: str, done: int, total: int) -> None:
        said.append(desc)
        if not killed:
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    res = calibrate(eps, TASK, params=params, max_evals=16, workers=2, progress=progress)
    assert killed and any("a replay worker died" in d for d in said), said
    assert {n: e.value for n, e in res.estimates.items()} == {n: e.value for n, e in ref.estimates.items()}
    assert res.residual_after == ref.residual_after and not multiprocessing.active_children()
