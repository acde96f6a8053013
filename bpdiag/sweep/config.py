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
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bpdiag._core.slots import LAYER_SLOTS, STEP_SLOTS
from bpdiag.choices.activations import activation_code
from bpdiag.choices.clipping import clip_code
from bpdiag.choices.defaults import DEFAULTS
from bpdiag.choices.inits import get_init
from bpdiag.choices.norms import norm_code, residual_scale
from bpdiag.choices.optim import OPTIMIZERS, resolve_optimizer
from bpdiag.choices.registry import lookup
from bpdiag.data import DATASETS, SHAPES, train_rows

MAX_RUNS = 10_000  # runs per sweep unless the spec (max_runs) or the CLI (--max-runs) says more
MAX_RUN_GIB = 8.0  # estimated memory of one run (max_run_gib, --max-run-gib)
MAX_SPEC_BYTES = 1 << 20


def _no_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic alone would read ``depth: true`` as 1)."""
    if isinstance(value, bool):
        raise ValueError("a number is needed, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Num = Annotated[float, BeforeValidator(_no_bool)]


class FieldError(ValueError):
    """A check of several fields that failed; ``field`` is the one to edit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RunConfig(BaseModel):
    """One training run. Field names are the MLflow param names and the sweep axes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: str = DEFAULTS.dataset
    n_samples: Int = Field(DEFAULTS.n_samples, ge=8, le=1_000_000,
                           description="synthetic data sets only")  # fmt: skip
    depth: Int = Field(DEFAULTS.depth, ge=1, le=1000, description="weight layers")
    width: Int = Field(DEFAULTS.width, ge=1, le=100_000)
    activation: str = DEFAULTS.activation
    init: str = DEFAULTS.init
    optimizer: str = DEFAULTS.optimizer
    lr: Num = Field(DEFAULTS.lr, gt=0, le=1e6)
    momentum: Num | None = Field(None, ge=0)
    weight_decay: Num | None = Field(None, ge=0)
    beta1: Num | None = Field(None, ge=0, lt=1)
    beta2: Num | None = Field(None, ge=0, lt=1)
    eps: Num | None = Field(None, ge=0)
    alpha: Num | None = Field(None, ge=0, le=1)
    clip: str = DEFAULTS.clip
    clip_value: Num | None = Field(None, gt=0)
    batch_size: Int = Field(DEFAULTS.batch_size, ge=1)
    steps: Int = Field(DEFAULTS.steps, ge=1, le=10_000_000)
    record_every: Int = Field(DEFAULTS.record_every, ge=1)
    sharpness_every: Int = Field(
        DEFAULTS.sharpness_every,
        ge=0,
        description="records between sharpness measurements; 0: none",
    )
    jacobian_inputs: Int = Field(
        DEFAULTS.jacobian_inputs,
        ge=0,
        le=256,
        description="inputs of the Jacobian spectrum at init; 0: none",
    )
    seed: Int = Field(DEFAULTS.seed, ge=0, le=2**32 - 1)
    dtype: Literal["float32", "float64"] = DEFAULTS.dtype
    norm: str = DEFAULTS.norm
    residual: bool = DEFAULTS.residual
    residual_scale: float | str = DEFAULTS.residual_scale  # α, or a name (choices.norms)

    @field_validator("residual_scale", mode="before")
    @classmethod
    def _residual_scale(cls, v: object) -> object:
        if isinstance(v, str):  # "0.5" from an MLflow param or a command line is a number
            try:
                v = float(v)
            except ValueError:
                pass
        try:
            residual_scale(v, 1)  # the choices' own check: a positive number or a known name
        except TypeError as err:
            raise ValueError(str(err)) from None
        return v

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
        try:
            clip_code(self.clip, self.clip_value)
        except (ValueError, TypeError) as err:
            raise FieldError("clip", str(err)) from None
        try:
            resolve_optimizer(self.optimizer, self.lr, self.optimizer_options())
        except (ValueError, TypeError) as err:
            raise FieldError("optimizer", str(err)) from None
        rows = train_rows(self.dataset, self.n_samples)
        batch = min(self.batch_size, rows)
        if self.norm == "batchnorm" and (batch == 1 or rows % batch == 1):
            raise FieldError(
                "batch_size",
                f"batchnorm needs at least 2 rows in every training batch, but batch_size="
                f"{self.batch_size} over the {rows} training rows of {self.dataset} leaves a "
                f"batch of 1; choose another batch_size",
            )
        return self

    def memory_bytes(self) -> int:
        """About the most memory the run holds at once: parameters with their gradients,
        optimizer state and initial copy (5×), the batch's activations, pre-activations, skip
        outputs and deltas (4× the units × batch), the records (arrays and tables), the data."""
        n_in, n_out, rows = SHAPES[self.dataset]
        rows = rows or self.n_samples
        sizes = [n_in] + [self.width] * (self.depth - 1) + [n_out]
        item = 4 if self.dtype == "float32" else 8
        params = sum(a * b + 3 * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        scratch = 4 * min(self.batch_size, rows) * sum(sizes)
        n_rec = (self.steps - 1) // self.record_every + 2
        records = 2 * 8 * n_rec * (self.depth * len(LAYER_SLOTS) + len(STEP_SLOTS))
        return (5 * params + scratch) * item + records + 2 * 8 * rows * (n_in + n_out)

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
LATER_FIELDS = {"norm": "none", "residual": False, "residual_scale": 1.0,
                "sharpness_every": 0, "jacobian_inputs": 0}  # fmt: skip


class Axis(BaseModel):
    """An axis: explicit ``values``, or (random method) a ``min``/``max`` range."""

    model_config = ConfigDict(extra="forbid")

    values: list[Any] | None = Field(None, min_length=1)
    min: Num | None = None
    max: Num | None = None
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
    count: Int | None = Field(None, ge=1, description="random method: runs to sample")
    sample_seed: Int = Field(0, ge=0, description="random method: seed of the sampler")
    seeds: list[Int] = Field(default_factory=lambda: [0], min_length=1)
    max_runs: Int = Field(MAX_RUNS, ge=1, description="refuse to expand to more runs")
    max_run_gib: Num = Field(MAX_RUN_GIB, gt=0, description="refuse a run that needs more")
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


def size(spec: SweepSpec) -> int:
    """Runs the spec expands to before duplicates are dropped (counted, not expanded)."""
    per_seed = sum(math.prod(len(a.values) for a in grid.values()) if spec.method == "grid"
                   else spec.count for grid in spec.grids)  # fmt: skip
    return per_seed * len(spec.seeds)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def _run_error(err: ValidationError, prefix: str, point: dict[str, Any], base: dict[str, Any],
               source: str) -> str:  # fmt: skip
    """The message for a run that fails as a whole, at the key the user must edit: the axis that
    set the field at fault, else ``base.<field>``, else ``base``."""
    first = err.errors(include_url=False)[0]
    problem = (first.get("ctx") or {}).get("error")
    field = problem.field if isinstance(problem, FieldError) else str((first["loc"] or ("",))[0])
    run = ", ".join(f"{k}={v}" for k, v in point.items())
    if field in point:
        where = f"{prefix}.{field} (the run {run})"
    elif field in base or not point:
        where = f"base.{field}" if field else "base"
    else:
        where = f"{prefix} (the run {run})"
    return _describe(err, where, source, field)


def expand(spec: SweepSpec, source: str = "<spec>", max_runs: int | None = None,
           max_run_gib: float | None = None) -> list[RunConfig]:  # fmt: skip
    """All RunConfigs of a sweep (deduplicated by run_key, in order), validated one by one.

    ``max_runs``/``max_run_gib`` override the spec's bounds on the number of runs (checked
    before anything is expanded) and on one run's estimated memory (``RunConfig.memory_bytes``).
    """
    limit = spec.max_runs if max_runs is None else max_runs
    gib = spec.max_run_gib if max_run_gib is None else max_run_gib
    n = size(spec)
    if n == 0:
        raise SpecError(f"{source}: parameters: an empty list of grids gives no runs")
    if n > limit:
        raise SpecError(
            f"{source}: the spec expands to {n:,} runs, above the limit of {limit:,}; to run them "
            f"all, set max_runs: {n} in the spec (or pass --max-runs {n})"
        )
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
            try:
                cfg = RunConfig(**{**spec.base, **point, "seed": seed})
            except ValidationError as err:
                raise SpecError(_run_error(err, prefix, point, spec.base, source)) from None
            if cfg.memory_bytes() > gib * 2**30:
                where = f"{prefix} (the run {cfg.name})" if point else "base"
                raise SpecError(
                    f"{source}: {where}: needs about {_gib(cfg.memory_bytes())} of memory, above "
                    f"the limit of {gib:g} GiB a run; make depth, width, batch_size or "
                    f"steps / record_every smaller, or set max_run_gib (or --max-run-gib)"
                )
            if cfg.run_key not in seen:
                seen.add(cfg.run_key)
                runs.append(cfg)
    return runs


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key]})",
                        key_node.start_mark,
                    )  # fmt: skip
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the base class says so
        return super().construct_mapping(node, deep)


def read_spec(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``: UTF-8 text of at most ``MAX_SPEC_BYTES``, unique keys."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()[: MAX_SPEC_BYTES + 1]
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file") from None
    except OSError as err:
        raise SpecError(f"{source}: cannot read: {err.strerror or err}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {MAX_SPEC_BYTES >> 20} MiB; is it a sweep spec?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            f"a sweep spec is a YAML file saved as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if problem.startswith("duplicate key") and mark:
            raise SpecError(
                f"{source}: line {mark.line + 1}: {problem}; give each key once"
            ) from None
        raise SpecError(f"{source}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply to be a sweep spec") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the file must be a mapping with name, base, parameters, ...; got {type(data).__name__}"
        )
    return {str(k): v for k, v in data.items()}


def load_spec(path: str | Path, max_runs: int | None = None,
              max_run_gib: float | None = None) -> tuple[SweepSpec, list[RunConfig]]:  # fmt: skip
    """Read, validate and expand a sweep file; every problem raises ``SpecError``. The bounds
    override the spec's (``expand``)."""
    data = read_spec(path)
    try:
        spec = SweepSpec(**data)
    except ValidationError as err:
        raise SpecError(_describe(err, "", str(path))) from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a sweep spec") from None
    return spec, expand(spec, str(path), max_runs, max_run_gib)
