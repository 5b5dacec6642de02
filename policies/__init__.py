"""Policies: one protocol (specs, batched ``act``, ``reset``), checkpoints, built-in models.

See policies/README.md. Public API::

    from policies import (PolicySpec, ObsSpec, ActionSpec, Policy, ChunkedPolicy, ChunkExecutor,
                          MLPPolicy, PointCloudPolicy, DiffusionPolicy, PushTStatePolicy,
                          TorchModuleAdapter,
                          CallablePolicy, make_policy, register_policy, list_policies,
                          save_checkpoint, load_checkpoint, read_manifest, import_torch_checkpoint)
"""

from policies.adapters import CallablePolicy, TorchModuleAdapter  # noqa: E402
from policies.checkpoint import (  # noqa: E402
    CheckpointError,
    CheckpointSpecError,
    import_torch_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    verify_checkpoint,
)
from policies.chunk_mlp import ChunkMLPConfig, ChunkMLPPolicy  # noqa: E402
from policies.diffusion import DiffusionConfig, DiffusionPolicy  # noqa: E402
from policies.interface import (
    ActionSpec,
    ChunkedPolicy,
    ChunkExecutor,
    ConfigError,
    DeviceError,
    ObsHistory,
    ObsSpec,
    Policy,
    PolicyProtocol,
    PolicyRegistryError,
    PolicySpec,
    SpecMismatchError,
    config_from_dict,
    config_to_dict,
    get_policy_class,
    list_policies,
    make_policy,
    register_policy,
    resolve_device,
)
from policies.models import MLPConfig, MLPPolicy, PointCloudConfig, PointCloudPolicy, RunningNorm  # noqa: E402
from policies.pusht_state import PushTStateConfig, PushTStatePolicy  # noqa: E402

__all__ = [
    "ActionSpec",
    "ChunkMLPConfig",
    "ChunkMLPPolicy",
    "CallablePolicy",
    "CheckpointError",
    "CheckpointSpecError",
    "ChunkExecutor",
    "ChunkedPolicy",
    "ConfigError",
    "DeviceError",
    "DiffusionConfig",
    "DiffusionPolicy",
    "MLPConfig",
    "MLPPolicy",
    "ObsHistory",
    "ObsSpec",
    "PointCloudConfig",
    "PointCloudPolicy",
    "Policy",
    "PolicyProtocol",
    "PolicyRegistryError",
    "PolicySpec",
    "PushTStateConfig",
    "PushTStatePolicy",
    "RunningNorm",
    "SpecMismatchError",
    "TorchModuleAdapter",
    "config_from_dict",
    "config_to_dict",
    "get_policy_class",
    "import_torch_checkpoint",
    "list_policies",
    "load_checkpoint",
    "make_policy",
    "read_manifest",
    "register_policy",
    "resolve_device",
    "save_checkpoint",
    "verify_checkpoint",
]
