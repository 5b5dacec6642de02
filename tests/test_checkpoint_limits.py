"""An edited manifest config is refused before the model is built (no memory bomb).

Each built-in policy class is saved, then its manifest's config is edited to sizes that
would need tens of gigabytes (the tensors are left untouched). The loader runs in a child
process whose address space is capped (RLIMIT_AS), so a loader that builds the model first
fails there with an allocation error instead of exhausting the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from policies import PolicySpec, make_policy, save_checkpoint
from twin.env import TwinEnv
from twin.tasks import ObservationCfg

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
ADDRESS_SPACE_LIMIT = 8 << 30  # bytes; the loader needs ~1.3 GB of address space

# (case, policy class, config saved, config field edited, edited value, words of the error)
CASES = [
    (
        "mlp",
        "mlp",
        {"hidden_sizes": [64, 64]},
        "hidden_sizes",
        [100000, 100000],
        "actor.0.weight has shape [64, 25], the config implies [100000, 25]",
    ),
    (
        "pointcloud",
        "pointcloud",
        {"point_mlp": [32, 64], "hidden_sizes": [64, 64]},
        "hidden_sizes",
        [100000, 100000],
        "the config implies [100000, 137]",
    ),
    (
        "diffusion_unet",
        "diffusion",
        {"network": "unet", "down_dims": [16, 32], "horizon": 8, "n_action_steps": 4},
        "down_dims",
        [100000, 100000],
        "the config implies [100000, 7, 5]",
    ),
    (
        "diffusion_mlp",
        "diffusion",
        {"network": "mlp", "mlp_hidden": 64, "horizon": 8, "n_action_steps": 4},
        "mlp_hidden",
        1_000_000_000,
        "net.inp.weight has shape [64, 56], the config implies [1000000000, 56]",
    ),
    # a buffer derived from the config only (not stored): the element cap refuses it
    (
        "diffusion_horizon",
        "diffusion",
        {"network": "unet", "down_dims": [16, 32], "horizon": 8, "n_action_steps": 4},
        "horizon",
        2_000_000_000,
        "buffer fixed_noise alone has shape [2000000000, 7]",
    ),
]


@pytest.fixture(scope="module")
def specs():
    state_env = TwinEnv("mug_to_sink")
    cloud_env = TwinEnv(
        "mug_to_sink",
        control_mode="discrete",
        observations=ObservationCfg(point_cloud=True, image_size=(96, 72), num_points=256),
    )
    out = {"state": PolicySpec.from_env(state_env, ["state"]), "cloud": PolicySpec.from_env(cloud_env)}
    state_env.close()
    cloud_env.close()
    return out


@pytest.fixture(scope="module")
def edited(specs, tmp_path_factory):
    """{case: checkpoint directory with the edited manifest}, plus "intact" (a control)."""
    root = tmp_path_factory.mktemp("edited")
    out: dict[str, Path] = {}
    for case, cls, cfg, field, value, _ in CASES:
        spec = specs["cloud"] if cls == "pointcloud" else specs["state"]
        torch.manual_seed(0)
        d = save_checkpoint(make_policy(cls, cfg, spec), root / case, training_step=1)
        m = json.loads((d / "manifest.json").read_text())
        assert m["config"][field] != value
        m["config"][field] = value
        (d / "manifest.json").write_text(json.dumps(m))
        out[case] = d
    out["intact"] = save_checkpoint(
        make_policy("mlp", {"hidden_sizes": [64, 64]}, specs["state"]), root / "intact", training_step=1
    )
    return out


def _load_in_capped_child(dirs: dict[str, Path]) -> dict[str, dict[str, str]]:
    """load_checkpoint on each directory in a child with a capped address space:
    {case: {"type": exception type or "ok", "message": ...}}."""
    script = textwrap.dedent("""
        import json, resource, sys
        import torch
        torch.set_num_threads(1)
        from policies import load_checkpoint
        limit = int(sys.argv[1])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        out = {}
        for arg in sys.argv[2:]:
            case, path = arg.split("=", 1)
            try:
                load_checkpoint(path)
                out[case] = {"type": "ok", "message": ""}
            except BaseException as exc:  # MemoryError / RuntimeError from an allocation too
                out[case] = {"type": type(exc).__name__, "message": str(exc)}
        print(json.dumps(out))
    """)
    args = [f"{case}={path}" for case, path in dirs.items()]
    r = subprocess.run(
        [sys.executable, "-c", script, str(ADDRESS_SPACE_LIMIT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_edited_config_is_refused_before_the_model_is_built(edited):
    results = _load_in_capped_child(edited)
    assert results["intact"]["type"] == "ok", results["intact"]
    for case, _cls, _cfg, field, value, words in CASES:
        got = results[case]
        assert got["type"] == "CheckpointError", (case, got)
        msg = got["message"]
        assert f"[config.{field}]" in msg, (case, msg)
        assert f"manifest config.{field}={value!r}" in msg, (case, msg)
        assert "does not match the tensors in model.safetensors" in msg, (case, msg)
        assert words in msg, (case, msg)
        assert "\n" not in msg, (case, msg)


def test_refusal_in_process_names_the_field_and_keeps_other_checks(edited, tmp_path):
    """The same refusal in this process (no allocation happens, so no cap is needed), and an
    intact manifest next to replaced weights still fails the sha256 check first."""
    from policies import CheckpointError, load_checkpoint

    with pytest.raises(
        CheckpointError,
        match=r"\[config\.hidden_sizes\]: manifest config\.hidden_sizes="
        r"\[100000, 100000\] does not match",
    ):
        load_checkpoint(edited["mlp"])
    import shutil

    intact = Path(shutil.copytree(edited["intact"], tmp_path / "intact"))
    blob = bytearray((intact / "model.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (intact / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"\[sha256\]"):
        load_checkpoint(intact)


def test_diffusion_schedule_length_is_bounded_before_anything_is_built(specs, tmp_path):
    """num_train_timesteps sizes a noise schedule built from the config alone (no stored tensor
    to compare with): a bound refuses absurd values, naming the field."""
    from policies import CheckpointError, load_checkpoint

    cfg = {"network": "unet", "down_dims": [16, 32], "horizon": 8, "n_action_steps": 4}
    d = save_checkpoint(make_policy("diffusion", cfg, specs["state"]), tmp_path / "diff", training_step=1)
    m = json.loads((d / "manifest.json").read_text())
    m["config"]["num_train_timesteps"] = 10**12
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"num_train_timesteps = 1000000000000 exceeds 100000"):
        load_checkpoint(d)
