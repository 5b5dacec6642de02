"""Evaluation videos: readable size, labels drawn on the frames, a failure under the worst condition.

Real worker processes render and encode the videos (real MuJoCo); the policy is a brittle
scripted reacher (a module-level function, so worker processes can unpickle it): it reaches
the mug only when the mug's yaw is <= 0 and the observation is noise-free, so it fails some
nominal and object_pose episodes and every observation_noise one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluator import (
    NOMINAL,
    EvalSpec,
    EvalSpecError,
    LocalExecutor,
    VideoCfg,
    evaluate,
    policy_ref,
)
from evaluator.worker import label_frames, video_labels
from policies import CallablePolicy, PolicySpec
from twin.env import TwinEnv
from twin.perturbations import Condition

CONDITIONS = [NOMINAL, "object_pose", "observation_noise"]
HOVER_DZ = 0.105  # reach: the hover point is 10.5 cm above the mug's body origin


def brittle_reacher(obs):
    out = []
    for s in obs["state"]:
        # state = mug position (0:3), mug quaternion wxyz (3:7), robot (7:22; TCP position 15:18)
        if abs(s[4]) + abs(s[5]) > 1e-3 or s[6] > 0:  # a tilted (noisy) mug or a positive yaw: give up
            out.append(12)  # "open gripper": a no-op
            continue
        err = s[0:3] + np.array([0.0, 0.0, HOVER_DZ]) - s[15:18]
        k = int(np.argmax(np.abs(err)))
        out.append(2 * k + (0 if err[k] > 0 else 1) if abs(err[k]) > 0.012 else 12)
    return np.array(out, dtype=np.int64)


def test_video_defaults_and_size_validation():
    v = VideoCfg()
    assert (v.width, v.height) == (320, 240)
    v.validate()
    for w, h, words in (
        (64, 48, "too small for its labels"),
        (1920, 1080, "larger than 1280x720"),
        (321, 240, "must be even"),
    ):
        with pytest.raises(EvalSpecError, match=words):
            VideoCfg(width=w, height=h).validate()


def test_labels_change_only_their_bands():
    frame = np.full((240, 320, 3), 128, dtype=np.uint8)
    fail = label_frames([frame, frame], video_labels("ckpt-a", "object_pose", 503, False, "timeout", "worst_failure"))
    ok = label_frames([frame], video_labels("ckpt-a", NOMINAL, 500, True, "", "success"))
    assert len(fail) == 2 and fail[0].shape == frame.shape and np.array_equal(fail[0], fail[1])
    assert np.array_equal(frame, np.full_like(frame, 128))  # the input is not modified
    changed = np.any(fail[0] != frame, axis=2)
    assert changed[:12].any() and changed[-12:].any()  # a band at the top and one at the bottom
    assert not changed[40:200].any()  # the scene in between is untouched
    red = (fail[0][..., 0] > 200) & (fail[0][..., 1] < 150)
    green = (ok[0][..., 1] > 200) & (ok[0][..., 0] < 150)
    assert red[-24:].sum() > 20 and not red[:-24].any()  # "FAILURE: timeout | worst condition", bottom
    assert green[-24:].sum() > 20 and not green[:-24].any()  # "SUCCESS", bottom
    assert video_labels("ckpt-a", "object_pose", 503, False, "timeout", "worst_failure") == [
        ("object_pose | seed 503 | ckpt-a", (255, 255, 255)),
        ("FAILURE: timeout | worst condition", (255, 90, 90)),
    ]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    env = TwinEnv("reach")
    spec = PolicySpec.from_env(env, ["state"])
    env.close()
    es = EvalSpec(
        name="videos", tasks=["reach"], conditions=CONDITIONS, episodes_per_condition=4, seed_start=500, batch_size=4
    ).validate()
    with LocalExecutor(workers=2) as ex:
        result = evaluate(
            [policy_ref(CallablePolicy(brittle_reacher, spec), "brittle")],
            es,
            tmp_path_factory.mktemp("videos"),
            executor=ex,
            plots=False,
        )
    return result


def test_videos_include_a_failure_under_the_worst_condition(campaign):
    import imageio.v3 as iio

    s = campaign.summary("brittle")
    rates = {c: st["success_rate"] for c, st in s.per_condition.items()}
    assert rates["observation_noise"] == 0.0 < rates["object_pose"]  # the worst condition
    first_failure = next(r for r in campaign.episodes if not r.success)
    assert first_failure.condition != "observation_noise"  # so the worst-condition video is an extra one
    by_tag = {v["tag"]: v for v in s.videos}
    assert sorted(by_tag) == ["failure", "success", "worst_failure"]
    worst = by_tag["worst_failure"]
    assert (worst["condition"], worst["success"], worst["worst_condition"]) == ("observation_noise", False, True)
    assert (by_tag["failure"]["condition"], by_tag["failure"]["seed"]) == (first_failure.condition, first_failure.seed)
    for v in s.videos:
        assert v["consistent"] is True, v  # the re-run reproduced the stored episode
        frames = iio.imread(Path(v["path"]), index=None)
        assert frames.shape[1:3] == (240, 320), v["path"]
        last = frames[-1].astype(int)
        red = (last[..., 0] > 170) & (last[..., 1] < 140) & (last[..., 2] < 140)
        green = (last[..., 1] > 170) & (last[..., 0] < 150) & (last[..., 2] < 150)
        outcome = green if v["success"] else red
        assert outcome[-24:].sum() > 10, v["tag"]  # the outcome line is drawn at the bottom


def test_video_frames_carry_the_labels_over_the_raw_render(campaign):
    """The first frame of the success video against the same scene rendered without labels."""
    import imageio.v3 as iio

    s = campaign.summary("brittle")
    v = next(v for v in s.videos if v["tag"] == "success")
    first = iio.imread(Path(v["path"]), index=0).astype(int)
    env = TwinEnv("reach")
    ep = next(
        e
        for e in EvalSpec(
            name="videos", tasks=["reach"], conditions=CONDITIONS, episodes_per_condition=4, seed_start=500
        )
        .validate()
        .episodes()
        if (e.condition, e.seed) == (v["condition"], v["seed"])
    )
    env.reset(seed=int(ep.seed), options={"condition": Condition.from_dict(ep.perturbation.to_dict())})
    raw = env.render_camera(v["camera"], 320, 240).astype(int)
    env.close()
    diff = np.abs(first - raw).mean(axis=2)
    assert diff[40:200].mean() < 6  # the scene: the same render, up to compression
    assert diff[:14].mean() > 3 * diff[40:200].mean() + 10  # the top label band
    assert diff[-14:].mean() > 3 * diff[40:200].mean() + 10  # the bottom label band
