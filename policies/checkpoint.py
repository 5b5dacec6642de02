"""Policy checkpoints: ``model.safetensors`` + ``manifest.json``, validated, never unpickled.

A checkpoint is a directory with

* ``model.safetensors``: the policy's ``state_dict`` (parameters and persistent buffers such
  as normalization statistics), nothing else;
* ``manifest.json``::

    {"format": "twinrank-checkpoint", "format_version": 1,
     "policy_class": "mlp", "config": {...}, "spec": {...}, "task": "mug_to_sink",
     "training_step": 12000, "run_id": "...", "data_digest": "...",
     "code_version": {"twinrank": "0.1.0", "git_commit": "...", "git_dirty": false,
                      "torch": "2.13.0", "safetensors": "0.8.0"},
     "created": "2025-01-01T00:00:00+00:00",
     "tensors": {"actor.0.weight": {"shape": [256, 25], "dtype": "float32"}, ...},
     "sha256": "<hex digest of model.safetensors>", "extra": {...}}

:func:`load_checkpoint` checks, before anything reaches a policy: the manifest (JSON,
format, version, fields), the weights file (not a pickle/zip renamed, sha256, safetensors
header consistent with the file size and with the manifest's tensor table), the policy
class (registered), its config and spec, and that the tensors are exactly those of a model
built from the config (names, shapes, dtypes) -- checked on a model built on the ``meta``
device first, so an edited config (``hidden_sizes: [100000, 100000]``) is refused before
anything is allocated, as is a config deriving far more elements than the file holds;
optionally that the spec fits an env. Every
failure is a :class:`CheckpointError` naming the file and the field. Only
``safetensors.torch.load_file`` reads tensors; ``torch.load`` is never called except by
:func:`import_torch_checkpoint` with ``allow_torch_load=True`` (and then with
``weights_only=True``).

Loading is bit-exact: the same checkpoint gives the same actions for the same inputs on
any machine with the same torch build (tests compare a fresh interpreter's actions with
``torch.equal``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from policies.interface import (
    ConfigError,
    Policy,
    PolicyRegistryError,
    PolicySpec,
    SpecMismatchError,
    config_from_dict,
    config_to_dict,
    get_policy_class,
    resolve_device,
)

FORMAT = "twinrank-checkpoint"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024

#: safetensors dtype codes <-> torch dtypes / manifest names
_ST_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}
_ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}

_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "policy_class": str,
    "config": dict,
    "spec": dict,
    "task": str,
    "training_step": int,
    "run_id": str,
    "data_digest": str,
    "code_version": (dict, str),
    "created": str,
    "tensors": dict,
    "sha256": str,
}


class CheckpointError(ValueError):
    """A checkpoint (or foreign weights file) that is refused; names the file and the field."""

    def __init__(self, path: str | os.PathLike[str], fieldname: str, message: str) -> None:
        self.path = str(path)
        self.field = fieldname
        self.message = message
        super().__init__(f"checkpoint {self.path} [{fieldname}]: {message}")

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        # raised in worker processes (demo collection, evaluation): must survive pickling
        return type(self), (self.path, self.field, self.message)


class CheckpointSpecError(CheckpointError, SpecMismatchError):
    """The checkpoint's spec does not fit the env it is loaded for."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> dict[str, Any]:
    """twinrank version, git commit (when the package lives in a git checkout), torch version."""
    from importlib import metadata

    try:
        version = metadata.version("twinrank")
    except metadata.PackageNotFoundError:
        version = "unknown"
    out: dict[str, Any] = {"twinrank": version, "git_commit": "", "git_dirty": False, "torch": torch.__version__}
    try:
        import safetensors

        out["safetensors"] = safetensors.__version__
    except Exception:  # pragma: no cover
        pass
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            )
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else False
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sniff_weights(path: Path) -> None:
    """Refuse pickles/zips renamed to .safetensors and files too short to be safetensors."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    # a safetensors header length can start with 0x80 too (896 bytes: 80 03 00 ..), but a
    # pickle's 9th byte is never the JSON header's "{"
    if (head[:1] == b"\x80" and head[8:9] != b"{") or head[:2] == b"PK":
        kind = "pickle" if head[:1] == b"\x80" else "zip"
        raise CheckpointError(
            path,
            "model.safetensors",
            f"this is a {kind} (torch.save) file, not safetensors; it is never unpickled. Use "
            f"import_torch_checkpoint(..., allow_torch_load=True) if you trust it",
        )
    if size < 10:
        raise CheckpointError(
            path, "model.safetensors", f"file is {size} bytes: too short to be safetensors (truncated?)"
        )
    n = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or n > min(size - 8, _MAX_HEADER):
        raise CheckpointError(
            path,
            "model.safetensors",
            f"not a safetensors file (expected an 8-byte little-endian header length followed "
            f"by a JSON header; header length reads {n} for a {size}-byte file, truncated?)",
        )


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": [...], "dtype": "float32"}}`` from a safetensors header, checked
    against the file size (a truncated file is refused) -- without reading any tensor."""
    path = Path(path)
    _sniff_weights(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, "model.safetensors", f"safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(path, "model.safetensors", "safetensors header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, dict[str, Any]] = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                path, f"model.safetensors:{name}", f"bad safetensors header entry {info!r} ({exc})"
            ) from exc
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * _ITEMSIZE[dtype] or start < 0:
            raise CheckpointError(
                path, f"model.safetensors:{name}", f"data offsets {start}..{end} do not fit shape {shape} of {dtype}"
            )
        end_max = max(end_max, end)
        out[name] = {"shape": shape, "dtype": dtype}
    if end_max > data_len:
        raise CheckpointError(
            path,
            "model.safetensors",
            f"file is truncated: the header declares {end_max} bytes of tensor data but only {data_len} follow it",
        )
    if end_max < data_len:
        raise CheckpointError(
            path, "model.safetensors", f"{data_len - end_max} unexpected trailing bytes after the tensor data"
        )
    return out


def _resolve_paths(directory_or_manifest: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    p = Path(directory_or_manifest)
    if p.is_dir():
        d = p
    elif p.name in (MANIFEST_NAME, WEIGHTS_NAME) or p.suffix in (".json", ".safetensors"):
        d = p.parent
    elif not p.exists():
        raise CheckpointError(p, "path", "no such checkpoint directory or manifest")
    else:
        raise CheckpointError(p, "path", f"expected a checkpoint directory or its {MANIFEST_NAME}")
    manifest = p if p.suffix == ".json" else d / MANIFEST_NAME
    return d, manifest, d / WEIGHTS_NAME


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``manifest.json`` (a directory or the file itself)."""
    _, mpath, _ = _resolve_paths(path)
    if not mpath.is_file():
        raise CheckpointError(mpath, MANIFEST_NAME, f"missing manifest file {mpath.name}")
    try:
        text = mpath.read_text(encoding="utf-8")
        m = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(mpath, MANIFEST_NAME, f"manifest is not valid JSON ({exc})") from exc
    if not isinstance(m, dict):
        raise CheckpointError(mpath, MANIFEST_NAME, "manifest is not a JSON object")
    if m.get("format") != FORMAT:
        raise CheckpointError(mpath, "format", f"format is {m.get('format')!r}, expected {FORMAT!r}")
    ver = m.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            mpath,
            "format_version",
            f"unsupported format_version {ver!r}; this twinrank reads {list(SUPPORTED_VERSIONS)}"
            + (" (written by a newer twinrank?)" if isinstance(ver, int) and ver > FORMAT_VERSION else ""),
        )
    for name, typ in _REQUIRED_FIELDS.items():
        if name not in m:
            raise CheckpointError(mpath, name, f"manifest field {name!r} is missing")
        v = m[name]
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            tn = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise CheckpointError(mpath, name, f"manifest field {name!r} must be {tn}, got {type(v).__name__}")
    if m["training_step"] < 0:
        raise CheckpointError(mpath, "training_step", f"training_step {m['training_step']} is negative")
    sha = m["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CheckpointError(mpath, "sha256", f"sha256 {sha!r} is not a 64-digit lowercase hex digest")
    for name, info in m["tensors"].items():
        f = f"tensors.{name}"
        if not isinstance(info, dict) or set(info) != {"shape", "dtype"}:
            raise CheckpointError(mpath, f, f"tensor entry must be {{'shape': [...], 'dtype': ...}}, got {info!r}")
        if not isinstance(info["shape"], list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in info["shape"]
        ):
            raise CheckpointError(
                mpath, f + ".shape", f"shape must be a list of non-negative ints, got {info['shape']!r}"
            )
        if info["dtype"] not in _TORCH_DTYPES:
            raise CheckpointError(mpath, f + ".dtype", f"unknown dtype {info['dtype']!r}")
    if "extra" in m and not isinstance(m["extra"], dict):
        raise CheckpointError(mpath, "extra", "manifest field 'extra' must be an object")
    return m


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------


def _state_tensors(policy: Policy) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU copies (no shared storage: safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in policy.state_dict().items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError("<policy>", f"tensors.{name}", f"state entry {name!r} is not a tensor")
        if t.dtype not in _DTYPE_NAMES:
            raise CheckpointError("<policy>", f"tensors.{name}", f"dtype {t.dtype} is not supported")
        out[name] = t.detach().to("cpu").contiguous().clone()
    return out


def save_checkpoint(
    policy: Policy,
    directory: str | os.PathLike[str],
    *,
    training_step: int,
    run_id: str = "",
    data_digest: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/manifest.json``; returns ``directory``.

    The policy must be a registered :class:`Policy` (``@register_policy``) with a config
    dataclass. ``extra`` is any JSON object (e.g. evaluation results, teacher run id).
    """
    from safetensors.torch import save

    if not isinstance(policy, Policy) or not policy.policy_name:
        raise CheckpointError(
            directory,
            "policy_class",
            f"{type(policy).__name__} is not a registered policy class; only @register_policy "
            f"classes with a config dataclass can be saved (adapters cannot)",
        )
    if type(policy).policy_name != policy.policy_name:
        raise CheckpointError(directory, "policy_class", f"{type(policy).__name__} is not registered itself")
    if isinstance(training_step, bool) or not isinstance(training_step, int) or training_step < 0:
        raise CheckpointError(directory, "training_step", f"training_step must be an int >= 0, got {training_step!r}")
    for name, v in (("run_id", run_id), ("data_digest", data_digest)):
        if not isinstance(v, str):
            raise CheckpointError(directory, name, f"{name} must be a string, got {type(v).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = _state_tensors(policy)
    blob = save(tensors, metadata={"format": "pt", "policy_class": policy.policy_name})
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy_class": policy.policy_name,
        "config": config_to_dict(policy.config),
        "spec": policy.spec.to_dict(),
        "task": policy.spec.task,
        "training_step": int(training_step),
        "run_id": run_id,
        "data_digest": data_digest,
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tensors": {k: {"shape": list(t.shape), "dtype": _DTYPE_NAMES[t.dtype]} for k, t in tensors.items()},
        "sha256": hashlib.sha256(blob).hexdigest(),
        "extra": extra or {},
    }
    try:
        text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(d / MANIFEST_NAME, "extra", f"manifest is not JSON-serializable ({exc})") from exc
    _atomic_write_bytes(d / WEIGHTS_NAME, blob)
    _atomic_write_bytes(d / MANIFEST_NAME, (text + "\n").encode("utf-8"))
    return d


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------


def _compare_tables(
    path: Path, have: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]], have_name: str, want_name: str
) -> None:
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing:
        raise CheckpointError(path, "tensors", f"missing tensors {missing}: {want_name} has them, {have_name} does not")
    if unexpected:
        raise CheckpointError(
            path, "tensors", f"unexpected tensors {unexpected}: {have_name} has them, {want_name} does not"
        )
    for name in want:
        if list(have[name]["shape"]) != list(want[name]["shape"]):
            raise CheckpointError(
                path,
                f"tensors.{name}.shape",
                f"tensor {name!r} has shape {list(have[name]['shape'])} in {have_name} but "
                f"{list(want[name]['shape'])} in {want_name}",
            )
        if have[name]["dtype"] != want[name]["dtype"]:
            raise CheckpointError(
                path,
                f"tensors.{name}.dtype",
                f"tensor {name!r} has dtype {have[name]['dtype']} in {have_name} but "
                f"{want[name]['dtype']} in {want_name}",
            )


def _build(path: Path, policy_class: str | type[Policy], config: Any, spec: Any) -> Policy:
    """A fresh policy on the CPU (nothing loaded yet); errors name the field."""
    if isinstance(policy_class, str):
        try:
            cls = get_policy_class(policy_class)
        except PolicyRegistryError as exc:
            raise CheckpointError(path, "policy_class", str(exc)) from exc
    else:
        cls = policy_class
    try:
        spec_obj = spec if isinstance(spec, PolicySpec) else PolicySpec.from_dict(spec)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, "spec", f"invalid policy spec ({exc})") from exc
    try:
        cfg = config if cls.config_class is None else config_from_dict(cls.config_class, config)
    except ConfigError as exc:
        raise CheckpointError(path, "config", f"{cls.__name__} rejects the config: {exc}") from exc
    try:
        return cls(cfg, spec_obj)
    except ConfigError as exc:
        raise CheckpointError(path, "config", f"{cls.__name__} rejects the config: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, "spec", f"{cls.__name__} cannot be built for this spec: {exc}") from exc


def _model_table(policy: Policy) -> dict[str, dict[str, Any]]:
    return {
        k: {"shape": list(t.shape), "dtype": _DTYPE_NAMES.get(t.dtype, str(t.dtype))}
        for k, t in policy.state_dict().items()
    }


#: elements a model may hold beyond its checkpoint's tensors (buffers derived from the config,
#: e.g. a noise schedule): at most this many, or as many as the checkpoint holds when more
_MIN_DERIVED_ELEMENTS = 1 << 22


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _fields_setting(config: dict[str, Any], dims: set[int]) -> list[str]:
    """Config fields whose value (an int or a list of ints) contains one of ``dims``."""
    out: list[str] = []
    for name, value in config.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v in dims for v in values):
            out.append(name)
    return out


def _check_config_fits_weights(mpath: Path, m: dict[str, Any], header: dict[str, dict[str, Any]]) -> None:
    """Build the policy on the ``meta`` device (no memory) from the manifest's config and spec
    and refuse, before anything is allocated, a config whose model differs from the tensors in
    the weights file or that derives far more elements than the file holds (an edited manifest
    could otherwise ask for any amount of memory)."""
    try:
        with torch.device("meta"):
            meta = _build(mpath, m["policy_class"], m["config"], m["spec"])
    except (NotImplementedError, RuntimeError):  # a custom policy whose __init__ needs real tensors:
        return  # checked after the real build, as before
    cls_name = type(meta).__name__
    model = _model_table(meta)
    config = m["config"]

    def refuse(detail: str, dims: set[int]) -> None:
        fields = _fields_setting(config, dims)
        where = ", ".join(f"config.{f}={config[f]!r}" for f in fields) if fields else "config"
        raise CheckpointError(
            mpath,
            f"config.{fields[0]}" if len(fields) == 1 else "config",
            f"manifest {where} does not match the tensors in {WEIGHTS_NAME} ({detail}); the "
            f"manifest was edited or belongs to other weights: restore the config the weights "
            f"were saved with",
        )

    for name in model:
        if name in header and list(header[name]["shape"]) != list(model[name]["shape"]):
            have, want = list(header[name]["shape"]), list(model[name]["shape"])
            dims = set(want) - set(have)
            if _fields_setting(config, dims):
                refuse(f"{name} has shape {have}, the config implies {want}", dims)
    # names, dtypes and the remaining shape differences keep the tensor-level wording
    _compare_tables(mpath, header, model, "the checkpoint", f"a fresh {cls_name} built from its config")
    stored = sum(_numel(t["shape"]) for t in header.values())
    derived = [(n, list(b.shape)) for n, b in meta.named_buffers() if n not in model]
    total = stored + sum(_numel(s) for _, s in derived)
    limit = stored + max(stored, _MIN_DERIVED_ELEMENTS)
    if total > limit:
        name, shape = max(derived, key=lambda d: _numel(d[1]))
        stored_dims = {int(s) for t in header.values() for s in t["shape"]}
        refuse(
            f"the config implies {total} elements, the file holds {stored}; buffer {name} alone has shape {shape}",
            set(shape) - stored_dims,
        )


def _load_into(path: Path, policy: Policy, tensors: dict[str, torch.Tensor]) -> None:
    try:
        policy.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the table comparison catches these first
        raise CheckpointError(path, "tensors", f"cannot load the tensors: {exc}") from exc


def load_checkpoint(
    directory_or_manifest: str | os.PathLike[str], device: str = "cpu", *, task_env: Any = None
) -> Policy:
    """Load and validate a checkpoint; returns a new policy in eval mode on ``device``.

    ``task_env`` (a TwinEnv / BatchedTwinEnv) additionally checks the spec against that env.
    """
    from safetensors.torch import load_file

    d, mpath, wpath = _resolve_paths(directory_or_manifest)
    m = read_manifest(mpath)
    if not wpath.is_file():
        raise CheckpointError(wpath, WEIGHTS_NAME, f"missing weights file {WEIGHTS_NAME} next to the manifest")
    _sniff_weights(wpath)
    digest = sha256_file(wpath)
    if digest != m["sha256"]:
        size = wpath.stat().st_size
        raise CheckpointError(
            wpath,
            "sha256",
            f"sha256 of {WEIGHTS_NAME} is {digest}, the manifest says "
            f"{m['sha256']}: the file is corrupt, truncated or was replaced "
            f"({size} bytes)",
        )
    header = read_safetensors_header(wpath)
    _compare_tables(mpath, header, m["tensors"], WEIGHTS_NAME, "the manifest")
    if m["spec"].get("task") != m["task"]:
        raise CheckpointError(
            mpath, "task", f"manifest task {m['task']!r} differs from spec.task {m['spec'].get('task')!r}"
        )
    dev = resolve_device(device)
    _check_config_fits_weights(mpath, m, header)
    policy = _build(mpath, m["policy_class"], m["config"], m["spec"])
    _compare_tables(
        mpath,
        m["tensors"],
        _model_table(policy),
        "the checkpoint",
        f"a fresh {type(policy).__name__} built from its config",
    )
    if task_env is not None:
        problems = policy.spec.mismatches(task_env)
        if problems:
            raise CheckpointSpecError(
                mpath, "spec", "the checkpoint's spec does not match the env:\n  - " + "\n  - ".join(problems)
            )
    tensors = load_file(str(wpath), device="cpu")
    _load_into(mpath, policy, tensors)
    policy.checkpoint_info = {
        k: m[k]
        for k in ("policy_class", "task", "training_step", "run_id", "data_digest", "code_version", "created", "sha256")
    }
    policy.checkpoint_info["path"] = str(d)
    policy.checkpoint_info["extra"] = m.get("extra", {})
    policy.eval()
    return policy.to(dev)


def verify_checkpoint(directory_or_manifest: str | os.PathLike[str]) -> dict[str, Any]:
    """Run every check of :func:`load_checkpoint`; returns the manifest."""
    load_checkpoint(directory_or_manifest)
    return read_manifest(directory_or_manifest)


def import_torch_checkpoint(
    pt_path: str | os.PathLike[str],
    policy_class: str | type[Policy],
    config: Any,
    spec: PolicySpec | dict,
    *,
    allow_torch_load: bool = False,
    device: str = "cpu",
) -> Policy:
    """Build ``policy_class(config, spec)`` from a foreign ``torch.save`` file.

    Refused unless ``allow_torch_load=True`` (only for files you trust); then the file is read
    with ``torch.load(weights_only=True)`` (tensors and plain containers only). Accepts a
    state dict, or a dict holding one under ``state_dict`` / ``model_state_dict`` / ``model``;
    a ``module.`` prefix (DataParallel) is stripped. Save the result with
    :func:`save_checkpoint` to convert it.
    """
    path = Path(pt_path)
    if not allow_torch_load:
        raise CheckpointError(
            path,
            "allow_torch_load",
            "refusing to read a torch.save (pickle) file; pass allow_torch_load=True only for a "
            "file you trust (it is then read with torch.load(weights_only=True))",
        )
    if not path.is_file():
        raise CheckpointError(path, "path", "no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError from the weights-only unpickler
        raise CheckpointError(path, "torch.load", f"torch.load(weights_only=True) refused the file ({exc})") from exc
    sd: Any = obj
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            path,
            "state_dict",
            "the file holds no state dict of tensors (expected a dict of "
            "tensors, or one under 'state_dict' / 'model_state_dict' / 'model')",
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    policy = _build(path, policy_class, config, spec)
    have = {k: {"shape": list(v.shape), "dtype": _DTYPE_NAMES.get(v.dtype, str(v.dtype))} for k, v in sd.items()}
    _compare_tables(path, have, _model_table(policy), "the file", f"a fresh {type(policy).__name__}")
    _load_into(path, policy, {k: v.contiguous() for k, v in sd.items()})
    policy.checkpoint_info = {"imported_from": str(path)}
    policy.eval()
    return policy.to(resolve_device(device))


def checkpoint_id(path: str | os.PathLike[str]) -> str:
    """Stable id of a checkpoint directory: the first 12 hex digits of the sha256 of
    ``model.safetensors`` and ``manifest.json`` (of the path, for a missing checkpoint)."""
    d = Path(path)
    h = hashlib.sha256()
    found = False
    for name in ("model.safetensors", "manifest.json"):
        f = d / name
        h.update(name.encode() + b"\0")
        if f.is_file():
            found = True
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        h.update(b"\0")
    if not found:
        return "missing-" + hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:8]
    return h.hexdigest()[:12]


__all__ = [
    "CheckpointError",
    "CheckpointSpecError",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "checkpoint_id",
    "code_version",
    "import_torch_checkpoint",
    "load_checkpoint",
    "read_manifest",
    "read_safetensors_header",
    "save_checkpoint",
    "sha256_file",
    "verify_checkpoint",
]
