"""Checkpoints: bit-exact round trips (also in a fresh interpreter) and every refusal case."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from policies import (
    CheckpointError,
    CheckpointSpecError,
    PolicySpec,
    SpecMismatchError,
    TorchModuleAdapter,
    import_torch_checkpoint,
    load_checkpoint,
    make_policy,
    read_manifest,
    save_checkpoint,
)
from policies.checkpoint import read_safetensors_header
from twin.batched import BatchedTwinEnv
from twin.env import TwinEnv
from twin.tasks import ObservationCfg

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def envs():
    disc = BatchedTwinEnv(
        "mug_to_sink",
        2,
        control_mode="discrete",
        observations=ObservationCfg(point_cloud=True, image_size=(96, 72), num_points=512),
    )
    cont = TwinEnv("mug_to_sink")
    obs_d, _ = disc.reset(seeds=3)
    obs_c, _ = cont.reset(seed=4)
    yield disc, obs_d, cont, obs_c
    disc.close()
    cont.close()


def _trained_mlp(spec: PolicySpec, obs: dict, **cfg) -> torch.nn.Module:
    """An MLP with non-trivial weights and normalizer statistics (a few optimizer steps)."""
    torch.manual_seed(0)
    p = make_policy("mlp", {"hidden_sizes": (32, 32), **cfg}, spec)
    p.update_normalizer(obs)
    opt = torch.optim.Adam(p.parameters(), lr=1e-2)
    acts = np.arange(len(obs["state"])) % 14 if spec.action.discrete else np.zeros((len(obs["state"]), 7))
    for _ in range(3):
        loss = p.compute_bc_loss(obs, acts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p.eval()


@pytest.fixture()
def mlp_ckpt(envs, tmp_path):
    disc, obs_d, _, _ = envs
    p = _trained_mlp(PolicySpec.from_env(disc), obs_d)
    d = save_checkpoint(p, tmp_path / "ckpt", training_step=120, run_id="run-1", data_digest="sha256:abc")
    return p, d


def _rewrite(d: Path, tensors: dict[str, torch.Tensor], manifest_tensors: bool = True) -> None:
    """Replace model.safetensors and make the manifest consistent with it (sha256, tensor table)."""
    save_file(tensors, str(d / "model.safetensors"))
    m = json.loads((d / "manifest.json").read_text())
    m["sha256"] = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    if manifest_tensors:
        names = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64"}
        m["tensors"] = {k: {"shape": list(v.shape), "dtype": names[v.dtype]} for k, v in tensors.items()}
    (d / "manifest.json").write_text(json.dumps(m))


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


def test_manifest_contents(mlp_ckpt):
    p, d = mlp_ckpt
    assert sorted(os.listdir(d)) == ["manifest.json", "model.safetensors"]
    m = read_manifest(d)
    assert m["format"] == "twinrank-checkpoint" and m["format_version"] == 1
    assert m["policy_class"] == "mlp" and m["task"] == "mug_to_sink"
    assert m["config"]["hidden_sizes"] == [32, 32]
    assert m["spec"] == p.spec.to_dict()
    assert (m["training_step"], m["run_id"], m["data_digest"]) == (120, "run-1", "sha256:abc")
    assert m["code_version"]["twinrank"] and "torch" in m["code_version"] and m["created"]
    assert m["tensors"]["obs_norm.mean"] == {"shape": [25], "dtype": "float32"}
    assert m["tensors"]["obs_norm.count"] == {"shape": [], "dtype": "float64"}
    assert m["sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert read_safetensors_header(d / "model.safetensors") == m["tensors"]
    assert read_manifest(d / "manifest.json") == m
    assert load_checkpoint(d / "manifest.json").checkpoint_info["run_id"] == "run-1"


def test_round_trip_is_bit_exact_for_every_model(envs, tmp_path, monkeypatch):
    disc, obs_d, cont, obs_c = envs
    obs_c1 = {k: v[None] for k, v in obs_c.items()}
    mlp_g = _trained_mlp(PolicySpec.from_env(cont), obs_c1)
    pc = make_policy("pointcloud", {"point_mlp": (32, 64), "hidden_sizes": (64, 64)}, PolicySpec.from_env(disc))
    pc.update_normalizer(obs_d)
    dif = make_policy(
        "diffusion",
        {"network": "unet", "down_dims": (16, 32), "horizon": 8, "n_action_steps": 4},
        PolicySpec.from_env(cont, obs_keys=["state"]),
    )
    dif.fit_normalizer({"state": obs_c1["state"] + np.random.default_rng(0).normal(size=(5, 25))})

    def boom(*a, **k):  # load_checkpoint must never call torch.load
        raise AssertionError("torch.load called")

    for name, policy, obs in (("mlp", mlp_g, obs_c1), ("pc", pc, obs_d), ("dif", dif, obs_c1)):
        d = save_checkpoint(policy, tmp_path / name, training_step=7, extra={"note": name})
        with monkeypatch.context() as mp:
            mp.setattr(torch, "load", boom)
            loaded = load_checkpoint(d, task_env=disc if name == "pc" else cont)
        assert type(loaded) is type(policy) and loaded is not policy
        assert loaded.checkpoint_info["training_step"] == 7 and loaded.checkpoint_info["extra"] == {"note": name}
        assert loaded.config == policy.config and loaded.spec == policy.spec
        for k, v in policy.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        policy.reset()
        loaded.reset()
        a0, a1 = policy.act(obs), loaded.act(obs)
        assert a0.dtype == a1.dtype and np.array_equal(a0, a1)
        with torch.no_grad():
            t0 = policy.features_tensors(policy.as_tensor_batch(obs))
            t1 = loaded.features_tensors(loaded.as_tensor_batch(obs))
        assert torch.equal(t0, t1)


def test_fresh_interpreter_gives_bit_identical_actions(envs, tmp_path):
    disc, obs_d, cont, obs_c = envs
    obs_c1 = {k: np.repeat(v[None], 2, axis=0) for k, v in obs_c.items()}
    policies = {
        "mlp_discrete": (_trained_mlp(PolicySpec.from_env(disc), obs_d), obs_d),
        "mlp_gaussian": (_trained_mlp(PolicySpec.from_env(cont), obs_c1), obs_c1),
        "diffusion": (
            make_policy(
                "diffusion",
                {"network": "mlp", "mlp_hidden": 64, "horizon": 8, "n_action_steps": 4},
                PolicySpec.from_env(cont, obs_keys=["state"]),
            ),
            obs_c1,
        ),
    }
    expected = {}
    for name, (policy, obs) in policies.items():
        save_checkpoint(policy, tmp_path / name, training_step=1)
        np.savez(tmp_path / f"{name}_obs.npz", **{k.replace("/", "__"): v for k, v in obs.items()})
        policy.reset()
        expected[name] = (policy.act(obs), policy.features(obs))
    script = textwrap.dedent("""
        import sys, numpy as np, torch
        torch.set_num_threads(1)
        from pathlib import Path
        from policies import load_checkpoint
        root = Path(sys.argv[1])
        for name in sys.argv[2:]:
            obs = {k.replace("__", "/"): v for k, v in np.load(root / f"{name}_obs.npz").items()}
            policy = load_checkpoint(root / name)
            np.save(root / f"{name}_actions.npy", policy.act(obs))
            np.save(root / f"{name}_features.npy", policy.features(obs))
    """)
    env = dict(os.environ, PYTHONHASHSEED="123")
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *policies],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for name, (acts, feats) in expected.items():
        other_a = np.load(tmp_path / f"{name}_actions.npy")
        other_f = np.load(tmp_path / f"{name}_features.npy")
        assert other_a.dtype == acts.dtype and other_a.tobytes() == acts.tobytes(), name
        assert other_f.tobytes() == feats.tobytes(), name
        assert torch.equal(torch.from_numpy(other_a), torch.from_numpy(acts))


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------


def test_missing_files(mlp_ckpt, tmp_path):
    _, d = mlp_ckpt
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    (d / "model.safetensors").rename(d / "elsewhere.bin")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing weights file"):
        load_checkpoint(d)
    (d / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json.*missing manifest"):
        load_checkpoint(d)


def test_bad_manifests(mlp_ckpt):
    _, d = mlp_ckpt
    good = (d / "manifest.json").read_text()
    (d / "manifest.json").write_text(good[:-20])
    with pytest.raises(CheckpointError, match=r"manifest\.json \[manifest\.json\]: manifest is not valid JSON"):
        load_checkpoint(d)
    cases = [
        (lambda m: m.update(format="pytorch"), r"\[format\]: format is 'pytorch'"),
        (lambda m: m.update(format_version=2), r"\[format_version\]: unsupported format_version 2.*newer"),
        (lambda m: m.pop("sha256"), r"\[sha256\]: manifest field 'sha256' is missing"),
        (lambda m: m.update(training_step="ten"), r"\[training_step\]: .* must be int"),
        (
            lambda m: m.update(policy_class="resnet9000"),
            r"\[policy_class\]: unknown policy class 'resnet9000'; registered: chunk_mlp, diffusion, mlp, pointcloud",
        ),
        (lambda m: m["config"].update(hidden_sizes="big"), r"\[config\]: MLPPolicy rejects the config.*hidden_sizes"),
        (lambda m: m["config"].update(dropout=0.1), r"\[config\]: .*unknown config field\(s\) \['dropout'\]"),
        (lambda m: m["spec"]["action"].update(n=None), r"\[spec\]"),
        (
            lambda m: m["tensors"]["actor.0.weight"].update(shape=[32, 24]),
            r"\[tensors\.actor\.0\.weight\.shape\]: tensor 'actor\.0\.weight' has shape \[32, 25\] in model\.safetensors "
            r"but \[32, 24\] in the manifest",
        ),
        (
            lambda m: m["tensors"]["actor.0.bias"].update(dtype="float16"),
            r"\[tensors\.actor\.0\.bias\.dtype\]: .*float32 in model\.safetensors but float16 in the manifest",
        ),
        (lambda m: m["tensors"].pop("head.linear.bias"), r"unexpected tensors \['head\.linear\.bias'\]"),
    ]
    for edit, pattern in cases:
        (d / "manifest.json").write_text(good)
        _edit_manifest(d, edit)
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint(d)
    (d / "manifest.json").write_text(good)
    load_checkpoint(d)


def test_renamed_pickles_are_never_unpickled(mlp_ckpt, tmp_path):
    p, d = mlp_ckpt
    weights = d / "model.safetensors"
    torch.save(p.state_dict(), weights)  # zip container
    with pytest.raises(
        CheckpointError,
        match=r"this is a zip \(torch\.save\) file, not safetensors.*"
        r"import_torch_checkpoint\(\.\.\., allow_torch_load=True\)",
    ):
        load_checkpoint(d)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    weights.write_bytes(pickle.dumps({"w": Evil()}, protocol=4))
    _edit_manifest(d, lambda m: m.update(sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    with pytest.raises(CheckpointError, match=r"this is a pickle \(torch\.save\) file, not safetensors"):
        load_checkpoint(d)
    assert not marker.exists()
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(d)


def test_header_length_starting_with_the_pickle_opcode_is_safetensors(tmp_path):
    """A safetensors header of 0x80 + 256 k bytes starts with byte 0x80, as a pickle does; a
    trained chunk_mlp checkpoint (header 896 bytes) was refused as a pickle before the fix."""
    path = tmp_path / "w.safetensors"
    for pad in range(256):
        save_file({"w" + "x" * pad: torch.zeros(2)}, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert "w" + "x" * pad in read_safetensors_header(path)


def test_checkpoint_errors_survive_pickling():
    """Raised in spawn workers (demo collection, evaluation): the pool must get the error back."""
    for cls in (CheckpointError, CheckpointSpecError):
        err = pickle.loads(pickle.dumps(cls("/x/ckpt", "model.safetensors", "bad")))
        assert type(err) is cls and str(err) == "checkpoint /x/ckpt [model.safetensors]: bad"


def test_truncated_or_corrupt_weights(mlp_ckpt):
    _, d = mlp_ckpt
    weights = d / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-100])
    with pytest.raises(CheckpointError, match=r"\[sha256\]: .*corrupt, truncated or was replaced"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="file is truncated"):
        read_safetensors_header(weights)
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"\[sha256\]"):
        load_checkpoint(d)


def test_tensor_set_must_match_the_model(mlp_ckpt):
    p, d = mlp_ckpt
    sd = {k: v.clone() for k, v in p.state_dict().items()}
    missing = dict(sd)
    missing.pop("actor.0.bias")
    _rewrite(d, missing)
    with pytest.raises(CheckpointError, match=r"\[tensors\]: missing tensors \['actor\.0\.bias'\]"):
        load_checkpoint(d)
    _rewrite(d, dict(sd, bogus=torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"\[tensors\]: unexpected tensors \['bogus'\]"):
        load_checkpoint(d)
    _rewrite(d, dict(sd, **{"actor.2.weight": sd["actor.2.weight"].double()}))
    with pytest.raises(
        CheckpointError,
        match=r"\[tensors\.actor\.2\.weight\.dtype\]: tensor 'actor\.2\.weight' "
        r"has dtype float64 in the checkpoint but float32 in a fresh MLPPolicy",
    ):
        load_checkpoint(d)
    _rewrite(d, dict(sd, **{"actor.2.weight": sd["actor.2.weight"][:, :8].contiguous()}))
    with pytest.raises(CheckpointError, match=r"tensor 'actor\.2\.weight' has shape \[32, 8\]"):
        load_checkpoint(d)
    _rewrite(d, sd)
    reloaded = load_checkpoint(d)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in sd.items())


def test_spec_mismatch_with_the_env(mlp_ckpt, envs):
    _, d = mlp_ckpt  # discrete mug_to_sink policy
    _, _, cont, _ = envs  # ee_delta env
    with pytest.raises(
        CheckpointSpecError,
        match=r"(?s)\[spec\]: .*control_mode: the policy acts in 'discrete' "
        r"\(Discrete\(14\)\) but the env uses 'ee_delta'",
    ) as info:
        load_checkpoint(d, task_env=cont)
    assert isinstance(info.value, SpecMismatchError) and isinstance(info.value, CheckpointError)
    load_checkpoint(d, task_env=envs[0])


def test_import_torch_checkpoint_needs_the_flag(mlp_ckpt, envs, tmp_path):
    p, _ = mlp_ckpt
    pt = tmp_path / "foreign.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in p.state_dict().items()}, "epoch": 3}, pt)
    with pytest.raises(CheckpointError, match=r"\[allow_torch_load\]: refusing"):
        import_torch_checkpoint(pt, "mlp", p.config, p.spec)
    q = import_torch_checkpoint(pt, "mlp", p.config, p.spec, allow_torch_load=True)
    obs = envs[1]
    assert np.array_equal(q.act(obs), p.act(obs))
    assert torch.equal(q.features_tensors(q.as_tensor_batch(obs)), p.features_tensors(p.as_tensor_batch(obs)))
    # converted to the safe format
    again = load_checkpoint(save_checkpoint(q, tmp_path / "converted", training_step=0))
    assert np.array_equal(again.act(obs), p.act(obs))
    # weights_only refuses arbitrary objects
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused"):
        import_torch_checkpoint(evil, "mlp", p.config, p.spec, allow_torch_load=True)
    assert not marker.exists()
    wrong = tmp_path / "wrong.pt"
    torch.save({"actor.0.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(CheckpointError, match="missing tensors"):
        import_torch_checkpoint(wrong, "mlp", p.config, p.spec, allow_torch_load=True)


def test_adapters_cannot_be_saved(envs, tmp_path):
    spec = PolicySpec.from_env(envs[2], obs_keys=["state"])
    adapter = TorchModuleAdapter(nn.Linear(25, 7), spec)
    with pytest.raises(CheckpointError, match="not a registered policy class"):
        save_checkpoint(adapter, tmp_path / "x", training_step=0)
    p = make_policy("mlp", {"hidden_sizes": (8,)}, spec)
    with pytest.raises(CheckpointError, match="training_step"):
        save_checkpoint(p, tmp_path / "y", training_step=-1)
    with pytest.raises(CheckpointError, match=r"\[extra\]: manifest is not JSON-serializable"):
        save_checkpoint(p, tmp_path / "z", training_step=0, extra={"bad": object()})
    # the weights of an earlier save stay consistent with their manifest
    d = save_checkpoint(p, tmp_path / "w", training_step=1)
    load_checkpoint(d)
    assert load_file(str(d / "model.safetensors")).keys() == p.state_dict().keys()
