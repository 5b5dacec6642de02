"""Declarative perturbation suites: DexScale-style Sim2Real gap factors for the twin.

A :class:`PerturbationSuite` is a named set of *factors*, each a typed range
(:class:`FactorSpec`) tagged action-invariant (``"AI"``: appearance, camera, lighting,
background, distractors -- the right action does not change) or semantic (``"SA"``:
object pose/shape, physics, latency -- the right action changes), following DexScale's
AI-DR / SA-DR split. ``suite.sample(seed)`` draws a :class:`Condition`: the concrete
values of every enabled factor for one episode.

Determinism: a condition is a pure function of (suite, seed). Every factor draws from its
own stream ``np.random.default_rng([seed, zlib.crc32(factor_name)])``, so two processes
build identical worlds and adding/removing a factor never changes another factor's
values. ``Condition.values`` holds only JSON-plain data (floats, ints, strings, lists,
dicts); ``apply_to_scene``/``apply_after_reset`` read nothing else, so a Condition that
went through ``to_dict``/JSON/``from_dict`` applies identically.

How the env uses a condition (see ``twin.env.TwinEnv.reset``): ``apply_to_scene`` returns
a modified *copy* of the SceneCfg (the input is never mutated) which is compiled;
``latency_s`` becomes the sim's actuation delay; the task places its objects; then
``apply_after_reset`` shifts the task's objects (``object_pose``); ``obs_noise_std`` is
added to state/proprio observations.

YAML format (``twin/suites/default.yaml`` uses it; ``load_suite`` reads it)::

    name: default                 # condition name when several factors are enabled
    factors:
      light_intensity: {kind: AI, range: [0.4, 1.6]}
      distractors: {kind: AI, range: [1, 4]}
      object_pose: {range: [-0.05, 0.05], yaw_range: [-0.26, 0.26]}
      object_scale: {kind: SA, range: [0.9, 1.1]}
      actuation_latency: {range: [0.0, 0.06], enabled: false}
      camera_fov: {}              # every field optional: defaults from the factor table
    tasks:                        # optional per-task overrides, merged by load_suite(task=...)
      mug_to_sink:
        object_pose: {range: [-0.03, 0.03]}

Per factor entry: ``kind`` (AI/SA, default the factor's own tag), ``distribution`` (optional;
must equal the factor's own), ``range: [lo, hi]`` (default below), extra ranges where the
factor has them (``object_pose.yaw_range``), ``enabled`` (default true) and ``fixed`` (a value
shaped like the factor's samples, e.g. ``camera_orientation: {fixed: [[0, 0, 1, 0.02]]}``: every
sample is that value; ``twinrank calibrate`` writes its estimates so); ``{}`` or
``null`` means all defaults and ``false`` is short for ``{enabled: false}``. Every range is
checked: two numbers, lo <= hi, inside the factor's hard bounds; errors are
:class:`PerturbationError` naming the factor, the field and the allowed bounds. Unknown
factor names, fields or suite names are errors that list the valid ones.

Conditions by name: ``suite.sample(seed).name`` is ``"nominal"`` with no enabled factor, the
factor's name for a single-factor suite (``suite.only(name)``) and the suite's name
otherwise. ``suite.evaluation_suites()`` gives nominal, each factor alone and all together.

Reading a condition: :func:`describe_condition` gives one ``(factor, kind, value)`` row per
factor with 3 significant digits in the factor's own units, angles in degrees
(``twinrank suite sample`` prints it; ``--json`` prints the exact ``Condition.to_dict()``).

Distributions: ``scale`` multiplies a nominal value by U(lo, hi); ``offset`` adds U(lo, hi)
per component; ``angle`` rotates by U(lo, hi) rad about a random axis/azimuth; ``value`` is
an absolute U(lo, hi); ``count`` an integer in [lo, hi]; ``color`` random rgb with each
channel in [lo, hi]; ``texture`` a random procedural texture (checker or gradient) with
two colours whose channels are in [lo, hi].

Factors (name, tag, distribution, default range -- what it changes):

==================  ==  ========  ==============  =============================================
light_intensity     AI  scale     [0.4, 1.6]      diffuse/ambient/specular of every light
light_direction     AI  angle     [0, 0.5] rad    tilt of every light's direction, random azimuth
light_color         AI  scale     [0.7, 1.3]      per-channel (rgb) scale of every light colour
object_color        AI  color     [0.05, 0.95]    rgb of each object's geoms
object_texture      AI  texture   [0.05, 0.95]    procedural texture on each object's geoms
table_texture       AI  texture   [0.05, 0.95]    procedural texture of the table top
background          AI  color     [0.05, 0.95]    skybox (``background_rgb``) and floor colour
distractors         AI  count     [1, 4]          small free primitives on the table top
camera_position     AI  offset    [-0.05, 0.05] m camera translation per axis (pos and target)
camera_orientation  AI  angle     [0, 0.087] rad  camera rotation about a random axis
camera_fov          AI  scale     [0.87, 1.15]    focal length (fx, fy) scale
object_pose         SA  offset    [-0.05, 0.05] m object xy offset after reset (+ yaw_range
                                                  [-0.26, 0.26] rad), z kept
object_scale        SA  scale     [0.9, 1.1]      object geom sizes and positions, spawn z raised
friction            SA  scale     [0.5, 1.5]      sliding friction of object and table geoms
mass                SA  scale     [0.5, 2.0]      object masses
joint_damping       SA  scale     [0.5, 2.0]      arm ``joint_damping_scale`` and fixture joints
controller_gains    SA  scale     [0.7, 1.3]      arm servo kp and kd (independent scales)
actuation_latency   SA  value     [0, 0.06] s     command delay (``Condition.latency_s``)
observation_noise   AI  value     [0, 0.01]       Gaussian std on state/proprio
==================  ==  ========  ==============  =============================================

MuJoCo materials replace a geom's rgba, so with both ``object_color`` and ``object_texture``
enabled the texture is what is seen. Per-entity factors (camera_*, object_*, friction/mass
of objects) sample ``N_SLOTS``
independent values; entity ``i`` uses slot ``i % N_SLOTS``. Cameras are taken in scene
order; objects are the task's ``object_names`` first, then any other ``kind == "object"``
body in scene order. Light factors are shared by all lights (a room lighting change).
Distractors are placed by rejection sampling (from a seed stored in the condition) on the
table top, clear of the robot base, the objects (with margin for their reset
randomization and ``object_pose`` offset), the task's ``keepout_sites``, other fixtures
(and the swing of their hinged parts) and each other; one that finds no free spot is
left out.
"""

from __future__ import annotations

import copy
import json
import math
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from twin.scene import BodyCfg, GeomCfg, JointCfg, Pose, SceneCfg, TextureCfg

if TYPE_CHECKING:
    from twin.sim import TwinSim
    from twin.tasks.base import Task

SUITES_DIR = Path(__file__).resolve().parent / "suites"
KINDS = ("AI", "SA")
DISTRIBUTIONS = ("scale", "offset", "angle", "value", "count", "color", "texture")
#: independent samples drawn for per-entity factors (cameras, objects)
N_SLOTS = 4
#: default density MuJoCo gives geoms of a body without an explicit mass (kg/m^3)
DEFAULT_DENSITY = 1000.0
#: units of colour-channel ranges (colours and textures), and of the observation noise std
RGB_UNITS = "rgb channel"
OBS_UNITS = "obs units (std)"


class PerturbationError(ValueError):
    """An invalid suite, factor spec or condition. The message names factor and field."""


# ---- factor table ------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeDef:
    """One typed range field of a factor: default [lo, hi] and hard bounds."""

    field: str
    default: tuple[float, float]
    bounds: tuple[float, float]
    lower_open: bool = False  # True: values must be strictly above bounds[0]
    integer: bool = False
    units: str = ""

    @property
    def is_angle(self) -> bool:
        return self.units == "rad"

    def range_text(self, rng: tuple[float, float] | None = None) -> str:
        """``[lo, hi] units`` as written in YAML (default: this field's default range); an
        angle range (rad) is followed by its value in degrees, e.g. ``[0, 0.5] rad = [0, 28.6] deg``."""
        lo, hi = self.default if rng is None else rng
        text = f"[{lo:g}, {hi:g}]" + (f" {self.units}" if self.units else "")
        if self.is_angle:
            text += f" = [{_sig(math.degrees(lo))}, {_sig(math.degrees(hi))}] deg"
        return text

    def bounds_text(self) -> str:
        lo = f"{self.bounds[0]:g} (exclusive)" if self.lower_open else f"{self.bounds[0]:g}"
        kind = "integers" if self.integer else "numbers"
        unit = f" {self.units}" if self.units else ""
        return f"{kind} in [{lo}, {self.bounds[1]:g}]{unit}"


@dataclass(frozen=True)
class FactorDef:
    """A factor's fixed definition (name, tag, distribution, ranges, description)."""

    name: str
    kind: str
    distribution: str
    ranges: tuple[RangeDef, ...]  # ranges[0] is the main "range" field
    description: str

    @property
    def default_range(self) -> tuple[float, float]:
        return self.ranges[0].default

    def range_def(self, field_name: str) -> RangeDef:
        for r in self.ranges:
            if r.field == field_name:
                return r
        raise KeyError(field_name)


def _r(
    default: tuple[float, float],
    bounds: tuple[float, float],
    lower_open: bool = False,
    integer: bool = False,
    units: str = "",
    field_name: str = "range",
) -> RangeDef:
    return RangeDef(field_name, default, bounds, lower_open, integer, units)


_DEFS: tuple[FactorDef, ...] = (
    FactorDef(
        "light_intensity",
        "AI",
        "scale",
        (_r((0.4, 1.6), (0.0, 10.0), lower_open=True, units="x"),),
        "scale of every light's diffuse, ambient and specular intensity",
    ),
    FactorDef(
        "light_direction",
        "AI",
        "angle",
        (_r((0.0, 0.5), (0.0, math.pi / 2), units="rad"),),
        "tilt of every light's direction by an angle in range, random azimuth",
    ),
    FactorDef(
        "light_color",
        "AI",
        "scale",
        (_r((0.7, 1.3), (0.0, 5.0), lower_open=True, units="x"),),
        "per-channel (r, g, b) scale of every light's colour",
    ),
    FactorDef(
        "object_color",
        "AI",
        "color",
        (_r((0.05, 0.95), (0.0, 1.0), units=RGB_UNITS),),
        "random rgb (channels in range) for each object's geoms",
    ),
    FactorDef(
        "object_texture",
        "AI",
        "texture",
        (_r((0.05, 0.95), (0.0, 1.0), units=RGB_UNITS),),
        "random checker/gradient texture (colour channels in range) on each object",
    ),
    FactorDef(
        "table_texture",
        "AI",
        "texture",
        (_r((0.05, 0.95), (0.0, 1.0), units=RGB_UNITS),),
        "random checker/gradient texture (colour channels in range) on the table top",
    ),
    FactorDef(
        "background",
        "AI",
        "color",
        (_r((0.05, 0.95), (0.0, 1.0), units=RGB_UNITS),),
        "random skybox (background_rgb) and floor colours (channels in range)",
    ),
    FactorDef(
        "distractors",
        "AI",
        "count",
        (_r((1, 4), (0, 12), integer=True, units="objects"),),
        "number of small random primitive free bodies placed on the table top",
    ),
    FactorDef(
        "camera_position",
        "AI",
        "offset",
        (_r((-0.05, 0.05), (-0.5, 0.5), units="m"),),
        "camera translation per axis (position and look-at target move together)",
    ),
    FactorDef(
        "camera_orientation",
        "AI",
        "angle",
        (_r((0.0, 0.087), (0.0, 0.5), units="rad"),),
        "camera rotation by an angle in range about a random axis (target and up rotate)",
    ),
    FactorDef(
        "camera_fov",
        "AI",
        "scale",
        (_r((0.87, 1.15), (0.25, 4.0), units="x"),),
        "scale of the focal lengths fx, fy (> 1 narrows the field of view)",
    ),
    FactorDef(
        "object_pose",
        "SA",
        "offset",
        (
            _r((-0.05, 0.05), (-0.3, 0.3), units="m"),
            _r((-0.26, 0.26), (-math.pi, math.pi), units="rad", field_name="yaw_range"),
        ),
        "object xy offset (range) and yaw offset (yaw_range) applied after the task's reset",
    ),
    FactorDef(
        "object_scale",
        "SA",
        "scale",
        (_r((0.9, 1.1), (0.5, 2.0), units="x"),),
        "uniform scale of each object's geoms (sizes and positions); spawn z raised",
    ),
    FactorDef(
        "friction",
        "SA",
        "scale",
        (_r((0.5, 1.5), (0.0, 5.0), lower_open=True, units="x"),),
        "scale of sliding friction of object and table geoms",
    ),
    FactorDef(
        "mass", "SA", "scale", (_r((0.5, 2.0), (0.0, 10.0), lower_open=True, units="x"),), "scale of each object's mass"
    ),
    FactorDef(
        "joint_damping",
        "SA",
        "scale",
        (_r((0.5, 2.0), (0.0, 10.0), lower_open=True, units="x"),),
        "scale of arm joint damping and of fixture joint (e.g. cabinet hinge) damping",
    ),
    FactorDef(
        "controller_gains",
        "SA",
        "scale",
        (_r((0.7, 1.3), (0.0, 3.0), lower_open=True, units="x"),),
        "independent scales of the arm servo stiffness kp and damping kd",
    ),
    FactorDef(
        "actuation_latency",
        "SA",
        "value",
        (_r((0.0, 0.06), (0.0, 0.5), units="s"),),
        "delay between a command and its application to the actuators",
    ),
    FactorDef(
        "observation_noise",
        "AI",
        "value",
        (_r((0.0, 0.01), (0.0, 0.5), units=OBS_UNITS),),
        "std of Gaussian noise added to state and proprio observations",
    ),
)
FACTORS: dict[str, FactorDef] = {d.name: d for d in _DEFS}
FACTOR_NAMES: tuple[str, ...] = tuple(FACTORS)


def list_factors() -> list[dict[str, Any]]:
    """Every factor: name, kind (AI/SA), distribution, default range and its ``units`` (``x`` for
    a scale of the nominal value, ``m``, ``s``, ``rad``, ``objects``, ``rgb channel`` in [0, 1],
    ``obs units (std)``), bounds, extra ranges with their ``extra_units``, ``range_text`` (every
    default range with units as YAML takes them, angles also in degrees) and description."""
    out = []
    for d in _DEFS:
        out.append(
            {
                "name": d.name,
                "kind": d.kind,
                "distribution": d.distribution,
                "range": list(d.default_range),
                "units": d.ranges[0].units,
                "bounds": d.ranges[0].bounds_text(),
                "extra_ranges": {r.field: list(r.default) for r in d.ranges[1:]},
                "extra_units": {r.field: r.units for r in d.ranges[1:]},
                "range_text": "; ".join(
                    [d.ranges[0].range_text()] + [f"{r.field} {r.range_text()}" for r in d.ranges[1:]]
                ),
                "description": d.description,
            }
        )
    return out


def _unknown_factor(name: Any) -> PerturbationError:
    return PerturbationError(f"unknown perturbation factor {name!r}; valid factors: {', '.join(FACTOR_NAMES)}")


# ---- specs and suites --------------------------------------------------------------------


@dataclass
class FactorSpec:
    """One factor as configured in a suite: tag, distribution and typed range(s)."""

    name: str
    kind: str = ""
    distribution: str = ""
    range: tuple[float, float] = (0.0, 0.0)
    enabled: bool = True
    extra_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: a fixed value (a :class:`Condition` value of this factor, e.g. a calibrated camera pose
    #: with its rotation axis): every sample is it, the range is not drawn from
    fixed: Any = None

    @staticmethod
    def default(name: str) -> FactorSpec:
        if name not in FACTORS:
            raise _unknown_factor(name)
        d = FACTORS[name]
        return FactorSpec(
            name=name,
            kind=d.kind,
            distribution=d.distribution,
            range=d.default_range,
            extra_ranges={r.field: r.default for r in d.ranges[1:]},
        )

    def get_range(self, field_name: str) -> tuple[float, float]:
        return self.range if field_name == "range" else self.extra_ranges[field_name]

    def validate(self) -> None:
        if self.name not in FACTORS:
            raise _unknown_factor(self.name)
        d = FACTORS[self.name]
        where = f"factor {self.name!r}"
        if self.kind not in KINDS:
            raise PerturbationError(
                f"{where}, field 'kind': {self.kind!r} is not a kind; use 'AI' (action-invariant) or 'SA' (semantic)"
            )
        if self.distribution != d.distribution:
            raise PerturbationError(
                f"{where}, field 'distribution': {self.distribution!r} is not "
                f"supported; this factor's distribution is {d.distribution!r}"
            )
        if not isinstance(self.enabled, bool):
            raise PerturbationError(f"{where}, field 'enabled': {self.enabled!r} is not true/false")
        allowed = {r.field for r in d.ranges[1:]}
        for key in self.extra_ranges:
            if key not in allowed:
                raise PerturbationError(
                    f"{where}: unknown field {key!r}; valid fields: {', '.join(sorted(_SPEC_FIELDS | allowed))}"
                )
        for rdef in d.ranges:
            if rdef.field != "range" and rdef.field not in self.extra_ranges:
                raise PerturbationError(f"{where}, field {rdef.field!r} is missing")
            _check_range(self.name, rdef, self.get_range(rdef.field))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "distribution": self.distribution,
            "range": _plain_range(self.range, self.name),
        }
        for key, rng in self.extra_ranges.items():
            d[key] = _plain_range(rng, self.name)
        d["enabled"] = self.enabled
        if self.fixed is not None:
            d["fixed"] = copy.deepcopy(self.fixed)
        return d

    @staticmethod
    def from_dict(name: str, data: Any, base: FactorSpec | None = None) -> FactorSpec:
        """Spec from a YAML entry; omitted fields come from ``base`` (default: the factor's)."""
        if name not in FACTORS:
            raise _unknown_factor(name)
        spec = copy.deepcopy(base) if base is not None else FactorSpec.default(name)
        if data is None:
            return spec
        if isinstance(data, bool):
            spec.enabled = data
            return spec
        if not isinstance(data, dict):
            raise PerturbationError(
                f"factor {name!r}: expected a mapping like {{kind: AI, range: [lo, hi]}}, got {data!r}"
            )
        d = FACTORS[name]
        extra = {r.field for r in d.ranges[1:]}
        for key, value in data.items():
            if key == "kind":
                spec.kind = value
            elif key == "distribution":
                spec.distribution = value
            elif key == "enabled":
                spec.enabled = value
            elif key == "range":
                spec.range = _parse_range(name, d.ranges[0], value)
            elif key == "fixed":
                spec.fixed = _check_fixed(name, value)
            elif key in extra:
                spec.extra_ranges[key] = _parse_range(name, d.range_def(key), value)
            else:
                raise PerturbationError(
                    f"factor {name!r}: unknown field {key!r}; valid fields: {', '.join(sorted(_SPEC_FIELDS | extra))}"
                )
        spec.validate()
        return spec


_SPEC_FIELDS = {"kind", "distribution", "range", "enabled", "fixed"}


def _check_fixed(name: str, value: Any) -> Any:
    """A ``fixed:`` value must have the shape this factor's samples have (checked against one)."""
    ref = _SAMPLERS[name](np.random.default_rng(0), FactorSpec.default(name))

    def same(a: Any, b: Any) -> bool:
        if isinstance(b, dict):
            return isinstance(a, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in b)
        if isinstance(b, list):
            if not b:
                return isinstance(a, list)
            return isinstance(a, list) and len(a) > 0 and all(same(x, b[0]) for x in a)
        if isinstance(b, str):
            return isinstance(a, str)
        return _is_number(a) and math.isfinite(float(a))

    if not same(value, ref):
        raise PerturbationError(
            f"factor {name!r}, field 'fixed': {value!r} is not a value of this factor; give one shaped like "
            f"{_shape_hint(ref)}"
        )
    return copy.deepcopy(value)


def _shape_hint(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_shape_hint(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return f"[{_shape_hint(v[0])}, ...]" if v else "[]"
    return "x" if not isinstance(v, str) else "'name'"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _parse_range(factor: str, rdef: RangeDef, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PerturbationError(
            f"factor {factor!r}, field {rdef.field!r}: {value!r} is not a range; "
            f"give [lo, hi] with {rdef.bounds_text()}"
        )
    _check_range(factor, rdef, value)
    if rdef.integer:
        return (int(value[0]), int(value[1]))
    return (float(value[0]), float(value[1]))


def _check_range(factor: str, rdef: RangeDef, value: Any) -> None:
    where = f"factor {factor!r}, field {rdef.field!r}"
    hint = f"give [lo, hi] with lo <= hi, {rdef.bounds_text()}"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PerturbationError(f"{where}: {value!r} is not a range; {hint}")
    lo, hi = value
    if not (_is_number(lo) and _is_number(hi)) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise PerturbationError(f"{where}: {list(value)!r} must be two finite numbers; {hint}")
    if rdef.integer and (float(lo) != int(lo) or float(hi) != int(hi)):
        raise PerturbationError(f"{where}: {list(value)!r} must be integers; {hint}")
    if lo > hi:
        raise PerturbationError(f"{where}: [{lo}, {hi}] has lo > hi; {hint}")
    bmin, bmax = rdef.bounds
    below = lo <= bmin if rdef.lower_open else lo < bmin
    if below or hi > bmax:
        raise PerturbationError(f"{where}: [{lo}, {hi}] is outside the allowed bounds; {hint}")


def _plain_range(rng: tuple[Any, Any], factor: str) -> list[Any]:
    d = FACTORS.get(factor)
    if d is not None and d.ranges[0].integer:
        return [int(rng[0]), int(rng[1])]
    return [float(rng[0]), float(rng[1])]


@dataclass
class PerturbationSuite:
    """A named set of factor specs; ``sample(seed)`` draws a Condition of the enabled ones."""

    name: str = "nominal"
    factors: dict[str, FactorSpec] = field(default_factory=dict)

    # ---- queries ---------------------------------------------------------------------------
    def factor_names(self, enabled_only: bool = True) -> list[str]:
        """Factor names in canonical (factor-table) order."""
        return [n for n in FACTOR_NAMES if n in self.factors and (self.factors[n].enabled or not enabled_only)]

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PerturbationError(f"suite name {self.name!r}: give a non-empty string")
        for key, spec in self.factors.items():
            if key not in FACTORS:
                raise _unknown_factor(key)
            if spec.name != key:
                raise PerturbationError(f"factor {key!r}: its spec is named {spec.name!r}; names must match")
            spec.validate()

    # ---- derived suites --------------------------------------------------------------------
    def only(self, factor_name: str) -> PerturbationSuite:
        """A single-factor suite (this suite's spec for it, enabled), named after the factor."""
        if factor_name not in FACTORS:
            raise _unknown_factor(factor_name)
        if factor_name not in self.factors:
            raise PerturbationError(
                f"suite {self.name!r} has no factor {factor_name!r}; its factors: "
                f"{', '.join(self.factor_names(enabled_only=False))}"
            )
        spec = copy.deepcopy(self.factors[factor_name])
        spec.enabled = True
        return PerturbationSuite(name=factor_name, factors={factor_name: spec})

    def only_kind(self, kind: str) -> PerturbationSuite:
        """The enabled factors of one tag: ``"AI"`` (AI-DR) or ``"SA"`` (SA-DR)."""
        if kind not in KINDS:
            raise PerturbationError(f"kind {kind!r}: use 'AI' or 'SA'")
        keep = {n: copy.deepcopy(self.factors[n]) for n in self.factor_names() if self.factors[n].kind == kind}
        return PerturbationSuite(name=f"{self.name}_{kind}", factors=keep)

    def nominal(self) -> PerturbationSuite:
        """A suite with every factor disabled: its samples are the nominal condition."""
        factors = {n: copy.deepcopy(s) for n, s in self.factors.items()}
        for s in factors.values():
            s.enabled = False
        return PerturbationSuite(name="nominal", factors=factors)

    def evaluation_suites(self) -> dict[str, PerturbationSuite]:
        """``nominal``, each enabled factor alone, and all enabled factors together (own name)."""
        out: dict[str, PerturbationSuite] = {"nominal": self.nominal()}
        for n in self.factor_names():
            out[n] = self.only(n)
        if len(self.factor_names()) > 1:
            out[self.name] = copy.deepcopy(self)
        return out

    # ---- sampling --------------------------------------------------------------------------
    def condition_name(self) -> str:
        names = self.factor_names()
        if not names:
            return "nominal"
        if len(names) == 1:
            return names[0]
        return self.name

    def sample(self, seed: int) -> Condition:
        """The condition for ``seed``: a pure function of (this suite, seed)."""
        self.validate()
        values: dict[str, Any] = {}
        for name in self.factor_names():
            spec = self.factors[name]
            values[name] = (
                copy.deepcopy(spec.fixed) if spec.fixed is not None else _SAMPLERS[name](factor_rng(seed, name), spec)
            )
        return Condition(name=self.condition_name(), seed=int(seed), values=values)

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "factors": {n: self.factors[n].to_dict() for n in self.factor_names(enabled_only=False)},
        }

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text (one flow-style line per factor); also written to ``path`` if given."""
        lines = [yaml.safe_dump({"name": self.name}, sort_keys=False).strip(), "factors:"]
        for fname, entry in self.to_dict()["factors"].items():
            flow = yaml.safe_dump(entry, sort_keys=False, default_flow_style=True, width=1000).strip()
            lines.append(f"  {fname}: {flow}")
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any, task: str = "", source: str = "suite") -> PerturbationSuite:
        if not isinstance(data, dict):
            raise PerturbationError(
                f"{source}: expected a mapping with 'name' and 'factors', got {type(data).__name__}"
            )
        unknown = set(data) - {"name", "factors", "tasks", "description"}
        if unknown:
            raise PerturbationError(
                f"{source}: unknown top-level field(s) {sorted(unknown)}; valid: name, factors, tasks, description"
            )
        name = data.get("name", "suite")
        if not isinstance(name, str) or not name:
            raise PerturbationError(f"{source}, field 'name': {name!r} is not a non-empty string")
        raw = data.get("factors")
        if not isinstance(raw, dict):
            raise PerturbationError(
                f"{source}, field 'factors': expected a mapping factor name -> "
                f"{{kind, range, enabled}}; valid factors: {', '.join(FACTOR_NAMES)}"
            )
        factors = {}
        for fname, entry in raw.items():
            factors[str(fname)] = FactorSpec.from_dict(str(fname), entry)
        tasks = data.get("tasks") or {}
        if not isinstance(tasks, dict):
            raise PerturbationError(f"{source}, field 'tasks': expected a mapping task -> factor overrides")
        for tname, overrides in tasks.items():
            if not isinstance(overrides, dict):
                raise PerturbationError(f"{source}, field 'tasks.{tname}': expected a mapping factor -> fields")
            for fname, entry in overrides.items():
                spec = FactorSpec.from_dict(str(fname), entry, base=factors.get(str(fname)))
                if tname == task:
                    factors[str(fname)] = spec
        suite = cls(name=name, factors=factors)
        suite.validate()
        return suite

    @classmethod
    def from_yaml(cls, path_or_text: str | Path, task: str = "") -> PerturbationSuite:
        """Load from a YAML file path or from YAML text."""
        if isinstance(path_or_text, Path) or _looks_like_path(path_or_text):
            path = Path(path_or_text)
            if not path.is_file():
                what = "is a folder, not a suite YAML file" if path.is_dir() else "not found"
                raise PerturbationError(
                    f"suite file {str(path)!r} {what}; built-in suites: {', '.join(available_suites())}"
                )
            text, source = path.read_text(), str(path)
        else:
            text, source = str(path_or_text), "suite YAML"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PerturbationError(f"{source}: not valid YAML ({_yaml_error_line(exc)})") from exc
        return cls.from_dict(data, task=task, source=source)


def _yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: ``line L, column C: problem``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _looks_like_path(s: str) -> bool:
    return "\n" not in s and (s.endswith((".yaml", ".yml")) or os.path.isfile(s))


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str | Path, task: str = "") -> PerturbationSuite:
    """A built-in suite by name (``twin/suites/<name>.yaml``) or a YAML file path.

    ``task`` selects that task's overrides from the file's ``tasks:`` section.
    """
    s = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in s or s.endswith((".yaml", ".yml")) or os.path.isfile(s):
        return PerturbationSuite.from_yaml(Path(s), task=task)
    path = SUITES_DIR / f"{s}.yaml"
    if not path.is_file():
        raise PerturbationError(
            f"unknown perturbation suite {s!r}; built-in suites: "
            f"{', '.join(available_suites())} (or give a path to a YAML file)"
        )
    return PerturbationSuite.from_yaml(path, task=task)


# ---- conditions --------------------------------------------------------------------------


@dataclass
class Condition:
    """Concrete factor values for one episode (JSON-plain ``values``, keyed by factor)."""

    name: str = "nominal"
    seed: int = 0
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        return float(self.values.get("actuation_latency", 0.0))

    @property
    def obs_noise_std(self) -> float:
        return float(self.values.get("observation_noise", 0.0))

    def kinds(self) -> dict[str, str]:
        """Default AI/SA tag of each factor in this condition."""
        return {n: FACTORS[n].kind for n in self.values if n in FACTORS}

    def _check_names(self) -> None:
        for n in self.values:
            if n not in FACTORS:
                raise _unknown_factor(n)

    def scene_values_key(self) -> str:
        """Canonical JSON of the values that change the scene ("" when none do): two
        conditions with the same key give the same perturbed scene from the same base."""
        vals = {k: v for k, v in self.values.items() if k in _SCENE_APPLIERS}
        return json.dumps(vals, sort_keys=True, default=str) if vals else ""

    def apply_to_scene(self, scene: SceneCfg, task: Task | None) -> SceneCfg:
        """A perturbed copy of ``scene`` (the input is left untouched)."""
        self._check_names()
        out = scene.copy()
        if not self.values:
            return out
        ctx = _Ctx(scene=out, task=task, values=self.values)
        for name in _APPLY_ORDER:
            if name in self.values and name in _SCENE_APPLIERS:
                try:
                    _SCENE_APPLIERS[name](out, self.values[name], ctx)
                except PerturbationError:
                    raise
                except (KeyError, TypeError, IndexError, ValueError) as exc:
                    raise PerturbationError(
                        f"condition {self.name!r}: value of factor {name!r} is malformed "
                        f"({exc!r}): {self.values[name]!r}"
                    ) from exc
        return out

    def apply_after_reset(self, sim: TwinSim, task: Task | None) -> None:
        """Shift the task's objects by the ``object_pose`` offsets (keep z, compose yaw)."""
        value = self.values.get("object_pose")
        if value is None or task is None:
            return
        sim.forward()  # the task set qpos; body poses must reflect it
        for i, name in enumerate(task.object_names):
            if not sim.is_free(name):
                continue  # only free objects can be moved
            dx, dy, dyaw = (float(v) for v in value[i % len(value)])
            pose = sim.body_pose(name)
            pos = pose[:3].copy()
            pos[0] += dx
            pos[1] += dy
            quat = _quat_mul(np.array([math.cos(dyaw / 2), 0.0, 0.0, math.sin(dyaw / 2)]), pose[3:])
            sim.set_free_body_pose(name, pos, quat)
        sim.forward()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "values": copy.deepcopy(self.values)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Condition:
        return Condition(
            name=d.get("name", "custom"), seed=int(d.get("seed", 0)), values=copy.deepcopy(dict(d.get("values", {})))
        )


def nominal_condition() -> Condition:
    return Condition()


# ---- readable conditions -----------------------------------------------------------------


def _sig(x: float, digits: int = 3) -> str:
    """``x`` with exactly ``digits`` significant digits (``1.00``, ``0.0240``, ``75.0``; ``0`` for zero)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    return f"{x:#.{digits}g}".rstrip(".")


def _q(x: Any, rdef: RangeDef) -> str:
    """One value in its range's units: an angle (rad) in degrees, a scale as ``x1.05``."""
    x = float(x)
    if rdef.is_angle:
        return f"{_sig(math.degrees(x))} deg"
    if rdef.units == "x":
        return f"x{_sig(x)}"
    if rdef.units == OBS_UNITS:
        return f"std {_sig(x)}"
    if rdef.units in ("", RGB_UNITS):
        return _sig(x)
    return f"{_sig(x)} {rdef.units}"


def _vec(v: Any, rdef: RangeDef | None = None) -> str:
    """A vector as ``(a, b, c)`` (3 significant digits) with its range's units."""
    inner = "(" + ", ".join(_sig(float(x)) for x in v) + ")"
    if rdef is None or rdef.units in ("", RGB_UNITS, OBS_UNITS):
        return inner
    if rdef.units == "x":
        return "x" + inner
    if rdef.is_angle:
        return "(" + ", ".join(_sig(math.degrees(float(x))) for x in v) + ") deg"
    return f"{inner} {rdef.units}"


def _slots(values: Any, entity: str, fmt: Callable[[Any], str]) -> str:
    """Per-entity values: ``cam0 ...; cam1 ...`` (entity ``i`` uses slot ``i % N_SLOTS``)."""
    return "; ".join(f"{entity}{i} {fmt(v)}" for i, v in enumerate(values))


def _tex(v: dict[str, Any]) -> str:
    return f"{v['builtin']} {_vec(v['rgb1'][:3])}/{_vec(v['rgb2'][:3])} repeat {_sig(float(v['repeat'][0]))}"


def _describe_distractors(v: dict[str, Any], d: FactorDef) -> str:
    shapes = [str(item["shape"]) for item in v["items"]]
    return f"{len(shapes)} object{'' if len(shapes) == 1 else 's'}" + (f": {', '.join(shapes)}" if shapes else "")


def _describe_object_pose(v: Any, d: FactorDef) -> str:
    xy, yaw = d.ranges[0], d.range_def("yaw_range")
    return _slots(v, "obj", lambda p: f"{_vec(p[:2], xy)}, yaw {_q(p[2], yaw)}")


_DESCRIBERS: dict[str, Callable[[Any, FactorDef], str]] = {
    "light_intensity": lambda v, d: _q(v, d.ranges[0]),
    "light_direction": lambda v, d: (
        f"tilt {_q(v['tilt'], d.ranges[0])}, azimuth {_sig(math.degrees(float(v['azimuth'])))} deg"
    ),
    "light_color": lambda v, d: "rgb " + _vec(v, d.ranges[0]),
    "object_color": lambda v, d: _slots(v, "obj", lambda c: _vec(c[:3])),
    "object_texture": lambda v, d: _slots(v, "obj", _tex),
    "table_texture": lambda v, d: _tex(v),
    "background": lambda v, d: f"sky {_vec(v['sky'][:3])}, floor {_vec(v['floor'][:3])}",
    "distractors": _describe_distractors,
    "camera_position": lambda v, d: _slots(v, "cam", lambda p: _vec(p, d.ranges[0])),
    "camera_orientation": lambda v, d: _slots(v, "cam", lambda a: f"{_q(a[3], d.ranges[0])} about axis {_vec(a[:3])}"),
    "camera_fov": lambda v, d: _slots(v, "cam", lambda x: _q(x, d.ranges[0])),
    "object_pose": _describe_object_pose,
    "object_scale": lambda v, d: _slots(v, "obj", lambda x: _q(x, d.ranges[0])),
    "friction": lambda v, d: (
        f"table {_q(v['table'], d.ranges[0])}; " + _slots(v["objects"], "obj", lambda x: _q(x, d.ranges[0]))
    ),
    "mass": lambda v, d: _slots(v, "obj", lambda x: _q(x, d.ranges[0])),
    "joint_damping": lambda v, d: _q(v, d.ranges[0]),
    "controller_gains": lambda v, d: f"kp {_q(v['kp'], d.ranges[0])}, kd {_q(v['kd'], d.ranges[0])}",
    "actuation_latency": lambda v, d: _q(v, d.ranges[0]),
    "observation_noise": lambda v, d: _q(v, d.ranges[0]),
}


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return float(_sig(v))
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def describe_condition(cond: Condition, suite: PerturbationSuite | None = None) -> list[tuple[str, str, str]]:
    """A condition as readable rows ``(factor, kind, value)``, one per factor, in factor-table order.

    Values have 3 significant digits and the units of the factor's own range definition
    (:data:`FACTORS`, ``ranges[i].units``): angles (rad in the suite) are shown in degrees
    (``camera_orientation`` as ``2.3 deg about axis (x, y, z)``, ``object_pose`` yaw,
    ``light_direction`` tilt and azimuth), scales as ``x1.05``, offsets in ``m``, latency in
    ``s``, colours as ``(r, g, b)`` triples with channels in [0, 1], textures by their
    builtin name (``checker``/``gradient``) with both colours and the repeat. Per-entity
    factors list their ``N_SLOTS`` values as ``cam0 ...; cam1 ...`` / ``obj0 ...``: camera or
    object ``i`` (scene order, task objects first) uses slot ``i % N_SLOTS``. ``kind`` is the
    suite's tag for the factor when ``suite`` is given, else the factor's default tag. A value
    that is not shaped as the factor's sampler makes it (or an unknown factor) is shown as
    rounded JSON prefixed ``malformed:`` / ``unknown factor:`` instead of raising. The exact
    values are ``cond.to_dict()``; this text is for people only.
    """

    def order(n: str) -> tuple[int, str]:
        return (FACTOR_NAMES.index(n) if n in FACTORS else len(FACTOR_NAMES), n)

    rows: list[tuple[str, str, str]] = []
    for name in sorted(cond.values, key=order):
        value = cond.values[name]
        if name not in FACTORS:
            rows.append((name, "?", "unknown factor: " + json.dumps(_rounded(value), default=str)))
            continue
        spec = suite.factors.get(name) if suite is not None else None
        kind = spec.kind if spec is not None else FACTORS[name].kind
        try:
            text = _DESCRIBERS[name](value, FACTORS[name])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            text = "malformed: " + json.dumps(_rounded(value), default=str)
        rows.append((name, kind, text))
    return rows


def factor_rng(seed: int, factor_name: str) -> np.random.Generator:
    """The factor's own random stream for ``seed`` (stable across processes and versions)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(factor_name.encode())])


# ---- samplers (rng, spec) -> JSON-plain value --------------------------------------------


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _rgb(rng: np.random.Generator, r: tuple[float, float]) -> list[float]:
    return [float(v) for v in rng.uniform(r[0], r[1], size=3)]


def _unit(rng: np.random.Generator) -> list[float]:
    v = rng.normal(size=3)
    v /= max(float(np.linalg.norm(v)), 1e-12)
    return [float(x) for x in v]


def _texture(rng: np.random.Generator, r: tuple[float, float], repeat: tuple[float, float]) -> dict[str, Any]:
    builtin = "checker" if rng.random() < 0.5 else "gradient"
    rep = _u(rng, repeat)
    return {"builtin": builtin, "rgb1": _rgb(rng, r), "rgb2": _rgb(rng, r), "repeat": [rep, rep]}


def _sample_scalar(rng: np.random.Generator, spec: FactorSpec) -> float:
    return _u(rng, spec.range)


def _sample_slots(rng: np.random.Generator, spec: FactorSpec) -> list[float]:
    return [_u(rng, spec.range) for _ in range(N_SLOTS)]


_SAMPLERS: dict[str, Callable[[np.random.Generator, FactorSpec], Any]] = {
    "light_intensity": _sample_scalar,
    "light_direction": lambda rng, s: {"tilt": _u(rng, s.range), "azimuth": _u(rng, (-math.pi, math.pi))},
    "light_color": lambda rng, s: [_u(rng, s.range) for _ in range(3)],
    "object_color": lambda rng, s: [_rgb(rng, s.range) for _ in range(N_SLOTS)],
    "object_texture": lambda rng, s: [_texture(rng, s.range, (40.0, 100.0)) for _ in range(N_SLOTS)],
    "table_texture": lambda rng, s: _texture(rng, s.range, (4.0, 16.0)),
    "background": lambda rng, s: {"sky": _rgb(rng, s.range), "floor": _rgb(rng, s.range)},
    "distractors": lambda rng, s: _sample_distractors(rng, s),
    "camera_position": lambda rng, s: [[_u(rng, s.range) for _ in range(3)] for _ in range(N_SLOTS)],
    "camera_orientation": lambda rng, s: [_unit(rng) + [_u(rng, s.range)] for _ in range(N_SLOTS)],
    "camera_fov": _sample_slots,
    "object_pose": lambda rng, s: [
        [_u(rng, s.range), _u(rng, s.range), _u(rng, s.extra_ranges["yaw_range"])] for _ in range(N_SLOTS)
    ],
    "object_scale": _sample_slots,
    "friction": lambda rng, s: {"table": _u(rng, s.range), "objects": _sample_slots(rng, s)},
    "mass": _sample_slots,
    "joint_damping": _sample_scalar,
    "controller_gains": lambda rng, s: {"kp": _u(rng, s.range), "kd": _u(rng, s.range)},
    "actuation_latency": _sample_scalar,
    "observation_noise": _sample_scalar,
}


def _sample_distractors(rng: np.random.Generator, spec: FactorSpec) -> dict[str, Any]:
    lo, hi = int(spec.range[0]), int(spec.range[1])
    count = int(rng.integers(lo, hi + 1))
    items = []
    for _ in range(count):
        shape = ("box", "cylinder", "sphere")[int(rng.integers(0, 3))]
        if shape == "box":
            size = [_u(rng, (0.015, 0.035)), _u(rng, (0.015, 0.035)), _u(rng, (0.015, 0.04))]
        elif shape == "cylinder":
            size = [_u(rng, (0.015, 0.03)), _u(rng, (0.015, 0.04))]
        else:
            size = [_u(rng, (0.015, 0.03))]
        items.append(
            {
                "shape": shape,
                "size": size,
                "rgba": _rgb(rng, (0.05, 0.95)) + [1.0],
                "yaw": _u(rng, (-math.pi, math.pi)),
                "mass": _u(rng, (0.05, 0.25)),
            }
        )
    return {"items": items, "placement_seed": int(rng.integers(0, 2**31 - 1))}


# ---- geometry helpers --------------------------------------------------------------------


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def _quat_mat(q: Iterable[float]) -> np.ndarray:
    w, x, y, z = np.asarray(tuple(q), dtype=float) / np.linalg.norm(tuple(q))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _axis_angle(axis: Iterable[float], angle: float) -> np.ndarray:
    """Rotation matrix (Rodrigues) about a (normalised) axis."""
    k = np.asarray(tuple(axis), dtype=float)
    k = k / max(float(np.linalg.norm(k)), 1e-12)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _tuple(v: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


def _world_poses(scene: SceneCfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """World position and rotation matrix of every body (walking the body tree)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def walk(b: BodyCfg, ppos: np.ndarray, prot: np.ndarray) -> None:
        pos = ppos + prot @ np.asarray(b.pose.pos, dtype=float)
        rot = prot @ _quat_mat(b.pose.quat)
        out[b.name] = (pos, rot)
        for c in b.children:
            walk(c, pos, rot)

    for b in scene.bodies:
        walk(b, np.zeros(3), np.eye(3))
    return out


def _geom_half_extents(g: GeomCfg) -> np.ndarray:
    """Half extents of the geom's own bounding box (geom frame)."""
    s = g.size
    if g.type == "box":
        return np.array(s[:3], dtype=float)
    if g.type == "sphere":
        return np.full(3, float(s[0]))
    if g.type == "cylinder":
        return np.array([s[0], s[0], s[1]], dtype=float)
    if g.type == "capsule":
        return np.array([s[0], s[0], s[1] + s[0]], dtype=float)
    try:
        from twin.meshes import load_mesh

        verts, _ = load_mesh(g.mesh)
        return np.abs(verts * np.asarray(g.mesh_scale)).max(axis=0)
    except Exception:  # an unreadable mesh fails loudly at compile time instead
        return np.zeros(3)


def _geom_aabb(g: GeomCfg, body_pos: np.ndarray, body_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned box (centre, half extents) of a geom."""
    rot = body_rot @ _quat_mat(g.pose.quat)
    center = body_pos + body_rot @ np.asarray(g.pose.pos, dtype=float)
    half = np.abs(rot) @ _geom_half_extents(g)
    return center, half


def _geom_volume(g: GeomCfg) -> float:
    if g.type != "mesh":
        from twin.compile import geom_volume

        return geom_volume(g)
    try:
        from twin.meshes import load_mesh

        verts, faces = load_mesh(g.mesh)
        v = verts * np.asarray(g.mesh_scale)
        tri = v[faces]
        return abs(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)
    except Exception:
        return 0.0


def _body_default_mass(b: BodyCfg) -> float:
    return DEFAULT_DENSITY * sum(_geom_volume(g) for g in b.geoms if g.collide)


@dataclass
class _Ctx:
    scene: SceneCfg
    task: Task | None
    values: dict[str, Any]

    def objects(self) -> list[BodyCfg]:
        """Task objects (``task.object_names`` order), then other ``kind == 'object'`` bodies."""
        names = list(self.task.object_names) if self.task is not None else []
        bodies = {b.name: b for b in self.scene.iter_bodies()}
        out = [bodies[n] for n in names if n in bodies]
        out += [b for b in self.scene.iter_bodies() if b.kind == "object" and b.name not in names]
        return out

    def tables(self) -> list[BodyCfg]:
        return [b for b in self.scene.iter_bodies() if b.kind == "table"]


def _slot(value: list[Any], i: int) -> Any:
    return value[i % len(value)]


def _table_top(scene: SceneCfg) -> tuple[GeomCfg, np.ndarray, np.ndarray] | None:
    """The table top geom (largest horizontal box of a 'table' body): geom, world centre, half."""
    poses = _world_poses(scene)
    best = None
    for b in scene.iter_bodies():
        if b.kind != "table":
            continue
        pos, rot = poses[b.name]
        for g in b.geoms:
            if g.type != "box":
                continue
            c, h = _geom_aabb(g, pos, rot)
            area = h[0] * h[1]
            if best is None or area > best[0]:
                best = (area, g, c, h)
    return None if best is None else (best[1], best[2], best[3])


# ---- scene appliers (scene copy, value, ctx) -> None -------------------------------------


def _apply_light_intensity(scene: SceneCfg, v: float, ctx: _Ctx) -> None:
    s = float(v)
    for lt in scene.lights:
        lt.diffuse = _tuple(np.asarray(lt.diffuse) * s)
        lt.ambient = _tuple(np.asarray(lt.ambient) * s)
        lt.specular = _tuple(np.asarray(lt.specular) * s)
    scene.headlight_ambient = _tuple(np.asarray(scene.headlight_ambient) * s)
    scene.headlight_diffuse = _tuple(np.asarray(scene.headlight_diffuse) * s)


def _apply_light_direction(scene: SceneCfg, v: dict[str, float], ctx: _Ctx) -> None:
    az = float(v["azimuth"])
    rot = _axis_angle((-math.sin(az), math.cos(az), 0.0), float(v["tilt"]))
    for lt in scene.lights:
        lt.dir = _tuple(rot @ np.asarray(lt.dir, dtype=float))


def _apply_light_color(scene: SceneCfg, v: list[float], ctx: _Ctx) -> None:
    s = np.asarray(v, dtype=float).reshape(3)
    for lt in scene.lights:
        lt.diffuse = _tuple(np.asarray(lt.diffuse) * s)
        lt.ambient = _tuple(np.asarray(lt.ambient) * s)
    scene.headlight_ambient = _tuple(np.asarray(scene.headlight_ambient) * s)
    scene.headlight_diffuse = _tuple(np.asarray(scene.headlight_diffuse) * s)


def _apply_object_color(scene: SceneCfg, v: list[list[float]], ctx: _Ctx) -> None:
    for i, b in enumerate(ctx.objects()):
        rgb = _tuple(_slot(v, i))[:3]
        for g in b.geoms:
            g.rgba = (*rgb, g.rgba[3])


def _texture_cfg(v: dict[str, Any]) -> TextureCfg:
    if v["builtin"] not in ("checker", "gradient", "flat"):
        raise ValueError(f"builtin {v['builtin']!r}")
    return TextureCfg(
        builtin=v["builtin"], rgb1=_tuple(v["rgb1"])[:3], rgb2=_tuple(v["rgb2"])[:3], repeat=_tuple(v["repeat"])[:2]
    )


def _apply_object_texture(scene: SceneCfg, v: list[dict[str, Any]], ctx: _Ctx) -> None:
    for i, b in enumerate(ctx.objects()):
        tex = _texture_cfg(_slot(v, i))
        for g in b.geoms:
            if g.visible:
                g.texture = copy.deepcopy(tex)


def _apply_table_texture(scene: SceneCfg, v: dict[str, Any], ctx: _Ctx) -> None:
    top = _table_top(scene)
    if top is not None:
        top[0].texture = _texture_cfg(v)


def _apply_background(scene: SceneCfg, v: dict[str, list[float]], ctx: _Ctx) -> None:
    scene.background_rgb = _tuple(v["sky"])[:3]
    floor = _tuple(v["floor"])[:3]
    scene.floor_rgba = (*floor, scene.floor_rgba[3])
    if scene.floor_texture is not None:
        scene.floor_texture.rgb1 = floor
        scene.floor_texture.rgb2 = _tuple(np.asarray(floor) * 0.8)


def _apply_camera_position(scene: SceneCfg, v: list[list[float]], ctx: _Ctx) -> None:
    for i, cam in enumerate(scene.cameras):
        d = np.asarray(_slot(v, i), dtype=float).reshape(3)
        cam.pos = _tuple(np.asarray(cam.pos) + d)
        cam.target = _tuple(np.asarray(cam.target) + d)


def _apply_camera_orientation(scene: SceneCfg, v: list[list[float]], ctx: _Ctx) -> None:
    for i, cam in enumerate(scene.cameras):
        ax, ay, az, angle = (float(x) for x in _slot(v, i))
        rot = _axis_angle((ax, ay, az), angle)
        pos = np.asarray(cam.pos, dtype=float)
        cam.target = _tuple(pos + rot @ (np.asarray(cam.target) - pos))
        cam.up = _tuple(rot @ np.asarray(cam.up, dtype=float))


def _apply_camera_fov(scene: SceneCfg, v: list[float], ctx: _Ctx) -> None:
    for i, cam in enumerate(scene.cameras):
        s = float(_slot(v, i))
        cam.fx = float(cam.fx * s)
        cam.fy = float(cam.fy * s)


def _scale_body_geoms(b: BodyCfg, s: float) -> None:
    for g in b.geoms:
        if g.type == "mesh":
            g.mesh_scale = _tuple(np.asarray(g.mesh_scale) * s)
        else:
            g.size = _tuple(np.asarray(g.size) * s)
        g.pose = Pose(pos=_tuple(np.asarray(g.pose.pos) * s), quat=g.pose.quat)
    for c in b.children:
        c.pose = Pose(pos=_tuple(np.asarray(c.pose.pos) * s), quat=c.pose.quat)
        _scale_body_geoms(c, s)


def _apply_object_scale(scene: SceneCfg, v: list[float], ctx: _Ctx) -> None:
    poses = _world_poses(scene)
    for i, b in enumerate(ctx.objects()):
        s = float(_slot(v, i))
        pos, rot = poses[b.name]
        # Lowest point of the body's geoms relative to its origin (world-aligned).
        bottoms = [(c - h)[2] - pos[2] for c, h in (_geom_aabb(g, pos, rot) for g in b.geoms if g.collide)]
        lowest = min(bottoms) if bottoms else 0.0
        _scale_body_geoms(b, s)
        x, y, z = b.pose.pos
        b.pose = Pose(pos=(float(x), float(y), float(z + lowest * (1.0 - s))), quat=b.pose.quat)
        scaled = {b.name} | {c.name for c in _iter_tree(b) if c is not b}
        for site in scene.sites:
            if site.body in scaled:
                site.pos = _tuple(np.asarray(site.pos) * s)
                site.half_extents = _tuple(np.asarray(site.half_extents) * s)


def _iter_tree(b: BodyCfg) -> list[BodyCfg]:
    out = [b]
    for c in b.children:
        out += _iter_tree(c)
    return out


def _scale_friction(g: GeomCfg, s: float) -> None:
    base = 1.0 if g.friction is None else g.friction  # MuJoCo's default sliding friction
    g.friction = float(min(base * s, 9.99))


def _apply_friction(scene: SceneCfg, v: dict[str, Any], ctx: _Ctx) -> None:
    for b in ctx.tables():
        for g in b.geoms:
            _scale_friction(g, float(v["table"]))
    for i, b in enumerate(ctx.objects()):
        s = float(_slot(v["objects"], i))
        for g in b.geoms:
            _scale_friction(g, s)


def _apply_mass(scene: SceneCfg, v: list[float], ctx: _Ctx) -> None:
    for i, b in enumerate(ctx.objects()):
        base = b.mass if b.mass is not None else _body_default_mass(b)
        if base > 0:
            b.mass = float(base * float(_slot(v, i)))


def _apply_joint_damping(scene: SceneCfg, v: float, ctx: _Ctx) -> None:
    s = float(v)
    scene.robot.joint_damping_scale = float(scene.robot.joint_damping_scale * s)
    for b in scene.iter_bodies():
        if b.joint is not None and b.joint.type != "free":
            b.joint.damping = float(b.joint.damping * s)


def _apply_controller_gains(scene: SceneCfg, v: dict[str, float], ctx: _Ctx) -> None:
    scene.robot.kp = _tuple(np.asarray(scene.robot.kp) * float(v["kp"]))
    scene.robot.kd = _tuple(np.asarray(scene.robot.kd) * float(v["kd"]))


# -- distractors -------------------------------------------------------------------------------

ROBOT_BASE_CLEARANCE = 0.2  # m around the arm's base
DISTRACTOR_MARGIN = 0.02  # m gap to everything else
TABLE_EDGE_MARGIN = 0.04  # m from the table edge
PLACEMENT_TRIES = 300


def _footprint_radius(item: dict[str, Any]) -> float:
    s = item["size"]
    if item["shape"] == "box":
        return math.hypot(float(s[0]), float(s[1]))
    return float(s[0])


def _half_height(item: dict[str, Any]) -> float:
    s = item["size"]
    return float(
        {"box": s[2] if len(s) > 2 else s[0], "cylinder": s[1] if len(s) > 1 else s[0], "sphere": s[0]}[item["shape"]]
    )


def _obstacles(
    scene: SceneCfg, ctx: _Ctx
) -> tuple[list[tuple[np.ndarray, float]], list[tuple[np.ndarray, np.ndarray]]]:
    """Circles (centre xy, radius) and rectangles (centre xy, half xy) distractors avoid."""
    poses = _world_poses(scene)
    circles: list[tuple[np.ndarray, float]] = []
    rects: list[tuple[np.ndarray, np.ndarray]] = []
    circles.append((np.asarray(scene.robot.base.pos[:2], dtype=float), ROBOT_BASE_CLEARANCE))
    # Objects, with room for the task's nominal reset shift and the object_pose offset.
    nominal_shift = float(getattr(getattr(ctx.task, "cfg", None), "object_xy_range", 0.05)) * math.sqrt(2)
    pose_v = ctx.values.get("object_pose")
    objects = ctx.objects()
    for i, b in enumerate(objects):
        pos, rot = poses[b.name]
        extra = nominal_shift
        if pose_v is not None:
            dx, dy, _ = _slot(pose_v, i)
            extra += math.hypot(float(dx), float(dy))
        radius = 0.0
        for body in _iter_tree(b):
            bpos, brot = poses[body.name]
            for g in body.geoms:
                c, h = _geom_aabb(g, bpos, brot)
                radius = max(radius, float(np.linalg.norm(c[:2] - pos[:2]) + np.linalg.norm(h[:2])))
        circles.append((pos[:2].copy(), radius + extra))
    # Keep-out sites of the task.
    keepout = list(getattr(ctx.task, "keepout_sites", ()) or ())
    for name in keepout:
        site = scene.site(name)
        if site.body:
            bpos, brot = poses[site.body]
            c = bpos + brot @ np.asarray(site.pos, dtype=float)
            h = np.abs(brot) @ np.asarray(site.half_extents, dtype=float)
        else:
            c, h = np.asarray(site.pos, dtype=float), np.asarray(site.half_extents, dtype=float)
        rects.append((c[:2], h[:2]))
    # Other fixtures (sink, shelf, cabinet...) and the swing of their hinged parts.
    skip = {b.name for b in objects} | {b.name for b in scene.iter_bodies() if b.kind in ("table", "distractor")}
    for b in scene.iter_bodies():
        if b.name in skip:
            continue
        bpos, brot = poses[b.name]
        for g in b.geoms:
            c, h = _geom_aabb(g, bpos, brot)
            rects.append((c[:2], h[:2]))
        if b.joint is not None and b.joint.type == "hinge":
            hinge = bpos + brot @ np.asarray(b.joint.pos, dtype=float)
            reach = 0.0
            for g in b.geoms:
                c, h = _geom_aabb(g, bpos, brot)
                reach = max(reach, float(np.linalg.norm(c[:2] - hinge[:2]) + np.linalg.norm(h[:2])))
            circles.append((hinge[:2], reach))
    return circles, rects


def _apply_distractors(scene: SceneCfg, v: dict[str, Any], ctx: _Ctx) -> None:
    items = list(v["items"])
    top = _table_top(scene)
    if top is None or not items:
        return  # no table to put them on
    _, tc, th = top
    top_z = float(tc[2] + th[2])
    circles, rects = _obstacles(scene, ctx)
    rng = np.random.default_rng(int(v["placement_seed"]))
    taken = {b.name for b in scene.iter_bodies()}
    for k, item in enumerate(items):
        r = _footprint_radius(item)
        half = th[:2] - r - TABLE_EDGE_MARGIN
        if np.any(half <= 0):
            continue
        spot = None
        for _ in range(PLACEMENT_TRIES):
            xy = tc[:2] + rng.uniform(-half, half)
            if any(np.linalg.norm(xy - c) < rad + r + DISTRACTOR_MARGIN for c, rad in circles):
                continue
            if any(np.all(np.abs(xy - c) < h + r + DISTRACTOR_MARGIN) for c, h in rects):
                continue
            spot = xy
            break
        if spot is None:
            continue  # no free spot: this distractor is left out
        circles.append((spot, r))
        name = f"distractor_{k}"
        while name in taken:
            name += "_"
        taken.add(name)
        yaw = float(item["yaw"])
        size = _tuple(item["size"])
        rgba = _tuple(item["rgba"])
        if len(rgba) == 3:
            rgba = (*rgba, 1.0)
        scene.bodies.append(
            BodyCfg(
                name=name,
                kind="distractor",
                pose=Pose(
                    pos=(float(spot[0]), float(spot[1]), top_z + _half_height(item) + 0.001),
                    quat=(math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)),
                ),
                joint=JointCfg(name=f"{name}_free", type="free"),
                mass=float(item.get("mass", 0.1)),
                geoms=[GeomCfg(type=item["shape"], size=size, rgba=rgba, name=f"{name}_geom", friction=0.8)],
            )
        )


_SCENE_APPLIERS: dict[str, Callable[[SceneCfg, Any, _Ctx], None]] = {
    "light_intensity": _apply_light_intensity,
    "light_direction": _apply_light_direction,
    "light_color": _apply_light_color,
    "object_color": _apply_object_color,
    "object_texture": _apply_object_texture,
    "table_texture": _apply_table_texture,
    "background": _apply_background,
    "distractors": _apply_distractors,
    "camera_position": _apply_camera_position,
    "camera_orientation": _apply_camera_orientation,
    "camera_fov": _apply_camera_fov,
    "object_scale": _apply_object_scale,
    "friction": _apply_friction,
    "mass": _apply_mass,
    "joint_damping": _apply_joint_damping,
    "controller_gains": _apply_controller_gains,
}
# object_pose: apply_after_reset; actuation_latency / observation_noise: read by the env.
#: distractors last: they are placed around the final (scaled) objects and fixtures
_APPLY_ORDER: tuple[str, ...] = tuple(n for n in FACTOR_NAMES if n != "distractors") + ("distractors",)

__all__ = [
    "Condition",
    "FACTORS",
    "FACTOR_NAMES",
    "FactorDef",
    "FactorSpec",
    "N_SLOTS",
    "PerturbationError",
    "PerturbationSuite",
    "RangeDef",
    "available_suites",
    "describe_condition",
    "factor_rng",
    "list_factors",
    "load_suite",
    "nominal_condition",
]
