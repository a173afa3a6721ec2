"""The workspace's `.autoresearch/config.toml`: what the human fixed for this workspace."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from autoresearch_mcp.nanochat.errors import UserError

DEFAULT_EDITABLE = ("train.py",)
MAX_NOISE_RUNS = 20


@dataclass
class WorkspaceConfig:
    profile: str = "auto"
    budget_seconds: float | None = None  # None: the profile's budget
    editable: list[str] = field(default_factory=lambda: list(DEFAULT_EDITABLE))
    devices: str = "auto"  # "auto", "cpu", or a comma list of CUDA indices such as "0,1"
    data_dir: str | None = None  # None: the per-user cache
    # None: the profile's own data. Else "builtin", "climbmix", or a local .parquet/.jsonl/.txt
    # file or a folder of them (the last file in sorted order is the validation split).
    data_source: str | None = None
    # "bubblewrap": every run in an OS sandbox (refused where there is none). "none": the opt-out;
    # runs then reach everything the server can, and are recorded as unisolated.
    isolation: str = "bubblewrap"
    memory_limit_gb: float | None = None  # None: three quarters of the machine's memory
    process_limit: int | None = None  # None: sandbox/limits.py's default
    # Seeds of the first kept baseline that keep_experiment launches at once to measure the noise
    # floor (0: only when measure_noise is called).
    noise_runs: int = 3
    # A run is `better` when it beats the best kept run by more than noise_k x the noise floor's
    # standard deviation (divided by sqrt(n) for an experiment of n runs); other keeps are refused.
    noise_k: float = 2.0

    @classmethod
    def load(cls, path: Path) -> WorkspaceConfig:
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(
                f"{path}: not valid TOML ({exc}); fix the file by hand or delete it to get the defaults"
            ) from exc
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UserError(
                f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        config = cls(**known)
        if not isinstance(config.editable, list) or not all(isinstance(p, str) for p in config.editable):
            raise UserError(f"{path}: 'editable' must be a list of relative file paths, e.g. [\"train.py\"]")
        if config.isolation not in ("bubblewrap", "none"):
            raise UserError(f'{path}: isolation = {config.isolation!r} is not understood; use "bubblewrap" or "none"')
        for name, minimum in (("memory_limit_gb", 0.1), ("process_limit", 1)):
            value = getattr(config, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum
            ):
                raise UserError(f"{path}: {name} = {value!r} must be a number of at least {minimum}")
        if (
            isinstance(config.noise_runs, bool)
            or not isinstance(config.noise_runs, int)
            or not 0 <= config.noise_runs <= MAX_NOISE_RUNS
        ):
            raise UserError(f"{path}: 'noise_runs' must be a whole number from 0 (off) to {MAX_NOISE_RUNS}, e.g. 3")
        if (
            isinstance(config.noise_k, bool)
            or not isinstance(config.noise_k, (int, float))
            or not 0 < config.noise_k <= 10
        ):
            raise UserError(f"{path}: 'noise_k' must be a number above 0 and at most 10, e.g. 2.0")
        return config

    def to_toml(self) -> str:
        lines = ["# autoresearch-mcp workspace settings (edited by the human, never by tools)"]
        for key, value in asdict(self).items():
            if value is None:
                lines.append(f"# {key} = (default)")
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(_toml_str(v) for v in value)}]")
            elif isinstance(value, str):
                lines.append(f"{key} = {_toml_str(value)}")
            else:
                lines.append(f"{key} = {value}")
        return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
