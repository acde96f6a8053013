"""Run and sweep configuration: pydantic models over the defaults of ``bpdiag.choices.defaults``.

A sweep file (``sweeps/*.yaml``) is a ``SweepSpec``: a ``base`` RunConfig delta, ``parameters``
axes (one grid, or a list of grids whose runs are joined), ``seeds``, and ``method`` grid or
random. ``expand`` turns it into RunConfigs, each with a stable ``run_key`` (a hash of its
resolved config). Every problem is reported as ``SpecError`` naming the file, the key path,
the bad value and what is allowed — before anything runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bpdiag.choices.activations import activation_code
from bpdiag.choices.clipping import clip_code
from bpdiag.choices.defaults import DEFAULTS
from bpdiag.choices.inits import get_init
from bpdiag.choices.norms import norm_code
from bpdiag.choices.optim import OPTIMIZERS, resolve_optimizer
from bpdiag.choices.registry import lookup
from bpdiag.data import DATASETS


class RunConfig(BaseModel):
    """One training run. Field names are the MLflow param names and the sweep axes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: str = DEFAULTS.dataset
    n_samples: int = Field(DEFAULTS.n_samples, ge=8, le=1_000_000,
                           description="synthetic data sets only")  # fmt: skip
    depth: int = Field(DEFAULTS.depth, ge=1, le=1000, description="weight layers")
    width: int = Field(DEFAULTS.width, ge=1, le=100_000)
    activation: str = DEFAULTS.activation
    init: str = DEFAULTS.init
    optimizer: str = DEFAULTS.optimizer
    lr: float = Field(DEFAULTS.lr, gt=0, le=1e6)
    momentum: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    beta1: float | None = Field(None, ge=0, lt=1)
    beta2: float | None = Field(None, ge=0, lt=1)
    eps: float | None = Field(None, ge=0)
    alpha: float | None = Field(None, ge=0, le=1)
    clip: str = DEFAULTS.clip
    clip_value: float | None = Field(None, gt=0)
    batch_size: int = Field(DEFAULTS.batch_size, ge=1)
    steps: int = Field(DEFAULTS.steps, ge=1, le=10_000_000)
    record_every: int = Field(DEFAULTS.record_every, ge=1)
    seed: int = Field(DEFAULTS.seed, ge=0, le=2**32 - 1)
    dtype: Literal["float32", "float64"] = DEFAULTS.dtype
    norm: str = DEFAULTS.norm
    residual: bool = DEFAULTS.residual
    residual_scale: Annotated[float, Field(gt=0)] | Literal["inv_sqrt_depth"] = (
        DEFAULTS.residual_scale
    )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        lookup("dataset", v, DATASETS)
        return v

    @field_validator("activation")
    @classmethod
    def _activation(cls, v: str) -> str:
        activation_code(v)
        return v

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        get_init(v)
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        lookup("optimizer", v, OPTIMIZERS)
        return v

    @field_validator("norm")
    @classmethod
    def _norm(cls, v: str) -> str:
        norm_code(v)
        return v

    @model_validator(mode="after")
    def _combination(self) -> RunConfig:
        clip_code(self.clip, self.clip_value)
        resolve_optimizer(self.optimizer, self.lr, self.optimizer_options())
        return self

    def optimizer_options(self) -> dict[str, object]:
        """The set options under PyTorch's keyword names (betas as a pair)."""
        opts = {k: getattr(self, k) for k in ("momentum", "weight_decay", "eps", "alpha")}
        opts = {k: v for k, v in opts.items() if v is not None}
        if self.beta1 is not None or self.beta2 is not None:
            beta1, beta2 = OPTIMIZERS[self.optimizer].defaults.get("betas", (None, None))
            opts["betas"] = (
                beta1 if self.beta1 is None else self.beta1,
                beta2 if self.beta2 is None else self.beta2,
            )
        return opts

    @property
    def run_key(self) -> str:
        """16 hex digits of SHA-256 over the resolved config: equal configs, equal keys. A field
        added in a later version (``LATER_FIELDS``) enters only where it is set away from its
        default, so a config keeps the key it had in a store written before the field existed."""
        dump = {k: v for k, v in self.model_dump().items()
                if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}  # fmt: skip
        text = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """A short human name: 'relu he_normal d20×64 batchnorm+skip adam clip=norm s0'."""
        clip = "" if self.clip == "none" else f" clip={self.clip}"
        cure = [self.norm] if self.norm != "none" else []
        cure += (
            ["skip" if self.residual_scale == 1.0 else f"skip×{self.residual_scale}"]
            if self.residual
            else []
        )
        cure = f" {'+'.join(cure)}" if cure else ""
        return (
            f"{self.activation} {self.init} d{self.depth}×{self.width}{cure} {self.optimizer}"
            f"{clip} s{self.seed}"
        )


RUN_FIELDS = tuple(RunConfig.model_fields)
# fields added after stores were written, with the default that means "as before they existed"
LATER_FIELDS = {"norm": "none", "residual": False, "residual_scale": 1.0}


class Axis(BaseModel):
    """An axis: explicit ``values``, or (random method) a ``min``/``max`` range."""

    model_config = ConfigDict(extra="forbid")

    values: list[Any] | None = Field(None, min_length=1)
    min: float | None = None
    max: float | None = None
    distribution: Literal["uniform", "log_uniform", "int_uniform"] = "uniform"

    @model_validator(mode="after")
    def _one_kind(self) -> Axis:
        if (self.values is None) == (self.min is None or self.max is None):
            raise ValueError("give either values: [...] or both min and max")
        if self.min is not None and self.max is not None:
            if self.min > self.max:
                raise ValueError(f"min {self.min} is above max {self.max}")
            if self.distribution == "log_uniform" and self.min <= 0:
                raise ValueError("log_uniform needs min > 0")
        return self


Grid = dict[str, Axis]


class SweepSpec(BaseModel):
    """A sweep file: see ``sweeps/default.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    experiment: str | None = None
    description: str = ""
    method: Literal["grid", "random"] = "grid"
    count: int | None = Field(None, ge=1, description="random method: runs to sample")
    sample_seed: int = Field(0, ge=0, description="random method: seed of the sampler")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    parameters: Grid | list[Grid] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct non-negative integers")
        return v

    @model_validator(mode="after")
    def _method(self) -> SweepSpec:
        if self.method == "random" and self.count is None:
            raise ValueError("method random needs count: N")
        if self.method == "grid" and self.count is not None:
            raise ValueError("count applies to method random only")
        for grid in self.grids:
            for key, axis in grid.items():
                if self.method == "grid" and axis.values is None:
                    raise ValueError(f"parameters.{key}: method grid needs values: [...]")
        return self

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"bpdiag-{self.name}"

    @property
    def grids(self) -> list[Grid]:
        return self.parameters if isinstance(self.parameters, list) else [self.parameters]


class SpecError(ValueError):
    """A sweep file that cannot run; the message says where and why."""


AXIS_KEYS = tuple(Axis.model_fields)


def _loc(loc: tuple) -> str:
    """('parameters', 'dict[str,Axis]', 'depth', 'values', 2) → 'parameters.depth.values[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, str) and ("[" in part or "," in part):
            continue  # pydantic's tag for a union member, not a key the user wrote
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: ValidationError, prefix: str, source: str, field: str = "") -> str:
    """One message for a pydantic error: file, key path, bad value, what is allowed.

    ``field``: the axis whose value is being checked at ``prefix`` (not repeated in the path).
    """
    first = err.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    if field and loc[:1] == (field,):
        loc = loc[1:]
    path = ".".join(p for p in (prefix, _loc(loc)) if p)
    where = f"{source}: {path}" if path else source
    if first["type"] == "extra_forbidden":
        if prefix:
            allowed = RUN_FIELDS
        elif len(loc) == 1:
            allowed = tuple(SweepSpec.model_fields)
        else:
            allowed = AXIS_KEYS
        return f"{where}: unknown key; allowed: {', '.join(allowed)}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("model_type", "dict_type") and loc[:1] == ("parameters",):
        msg = "an axis must be a mapping like {values: [...]} (or min/max for method random)"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    return f"{where}: {msg}{shown}"


def _run_config(
    values: dict[str, Any], where: str, source: str, field: str = "", fields_only: bool = False
) -> RunConfig | None:
    """RunConfig(**values) or a SpecError located at ``where``; with ``fields_only``, errors that
    involve several fields (checked later, per run) are let through."""
    unknown = sorted(set(values) - set(RUN_FIELDS))
    if unknown:
        raise SpecError(
            f"{source}: {where}.{unknown[0]}: unknown key; allowed: {', '.join(RUN_FIELDS)}"
        )
    try:
        return RunConfig(**values)
    except ValidationError as err:
        if fields_only and not err.errors(include_url=False)[0]["loc"]:
            return None
        raise SpecError(_describe(err, where, source, field)) from None


def _sample(axis: Axis, rng: np.random.Generator) -> Any:
    if axis.values is not None:
        return axis.values[int(rng.integers(len(axis.values)))]
    if axis.distribution == "log_uniform":
        return float(math.exp(rng.uniform(math.log(axis.min), math.log(axis.max))))
    if axis.distribution == "int_uniform":
        return int(rng.integers(int(axis.min), int(axis.max) + 1))
    return float(rng.uniform(axis.min, axis.max))


def expand(spec: SweepSpec, source: str = "<spec>") -> list[RunConfig]:
    """All RunConfigs of a sweep (deduplicated by run_key, in order), validated one by one."""
    _run_config(spec.base, "base", source, fields_only=True)  # field errors point at base
    points: list[tuple[str, dict[str, Any]]] = []
    for g, grid in enumerate(spec.grids):
        prefix = f"parameters[{g}]" if isinstance(spec.parameters, list) else "parameters"
        for key, axis in grid.items():  # each value alone over the base: precise error paths
            if key not in RUN_FIELDS:
                raise SpecError(
                    f"{source}: {prefix}.{key}: unknown key; allowed: {', '.join(RUN_FIELDS)}"
                )
            if key == "seed":
                raise SpecError(f"{source}: {prefix}.seed: use the top-level seeds: [...] list")
            for i, value in enumerate(axis.values or []):
                where = f"{prefix}.{key}.values[{i}]"
                _run_config({**spec.base, key: value}, where, source, key, fields_only=True)
        if spec.method == "grid":
            keys = list(grid)
            for combo in itertools.product(*(grid[k].values for k in keys)):
                points.append((prefix, dict(zip(keys, combo, strict=True))))
        else:
            rng = np.random.default_rng([spec.sample_seed, g])
            for _ in range(spec.count):
                points.append((prefix, {k: _sample(a, rng) for k, a in grid.items()}))
    runs, seen = [], set()
    for prefix, point in points:
        for seed in spec.seeds:
            values = {**spec.base, **point, "seed": seed}
            where = f"{prefix} run {', '.join(f'{k}={v}' for k, v in point.items())}"
            cfg = _run_config(values, where, source)
            if cfg.run_key not in seen:
                seen.add(cfg.run_key)
                runs.append(cfg)
    return runs


def load_spec(path: str | Path) -> tuple[SweepSpec, list[RunConfig]]:
    """Read, validate and expand a sweep file; every problem raises ``SpecError``."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file") from None
    except OSError as err:
        raise SpecError(f"{source}: cannot read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{source}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the file must be a mapping with name, base, parameters, ...; got {type(data).__name__}"
        )
    try:
        spec = SweepSpec(**{str(k): v for k, v in data.items()})
    except ValidationError as err:
        raise SpecError(_describe(err, "", source)) from None
    return spec, expand(spec, source)
