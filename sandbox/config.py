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
LOCAL_BACKEND = "local"  # runs on this machine's own device slots
RAY_BACKEND = "ray"  # one Ray job per run on a Ray cluster (sandbox/ray_cluster.py)
LOCAL_HEAD = "local"  # the `address` that asks the server to start (and stop) a one-node Ray itself


@dataclass(frozen=True)
class ClusterConfig:
    """The `[cluster]` table: where runs execute. Absent, they run on this machine."""

    backend: str = LOCAL_BACKEND  # "local" or "ray"
    address: str = LOCAL_HEAD  # ray: the head's Jobs API, "http://HEAD:8265", or "local"
    cpus_per_run: float = 1.0  # ray, cpu profile: the CPUs each run reserves (GPU profiles reserve one GPU)
    data_dir: str | None = None  # ray: the data cache on the nodes (default: each node's own per-user cache)
    python: str | None = None  # ray: the nodes' interpreter with autoresearch-mcp (default: `python`; local: ours)

    @classmethod
    def parse(cls, raw: object, path: Path) -> ClusterConfig:
        if not isinstance(raw, dict):
            raise UserError(f'{path}: [cluster] must be a table, e.g. [cluster] then backend = "ray" on the next line')
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(
                f"{path}: unknown [cluster] setting(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        config = cls(**raw)
        if config.backend not in (LOCAL_BACKEND, RAY_BACKEND):
            raise UserError(f'{path}: [cluster] backend = {config.backend!r} is not understood; use "local" or "ray"')
        address = config.address
        if not isinstance(address, str) or not (address == LOCAL_HEAD or address.startswith(("http://", "https://"))):
            raise UserError(
                f"{path}: [cluster] address = {address!r} is not understood; use the head's Jobs API, e.g. "
                '"http://HEAD:8265", or "local" (the server starts a one-node Ray itself)'
            )
        cpus = config.cpus_per_run
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus <= 1024:
            raise UserError(f"{path}: [cluster] cpus_per_run must be a number above 0, e.g. 1")
        for name in ("data_dir", "python"):
            if getattr(config, name) is not None and not isinstance(getattr(config, name), str):
                raise UserError(f"{path}: [cluster] {name} must be a string (a path on the nodes)")
        return config

    def to_toml(self) -> list[str]:
        """The table's lines; commented out while it holds only the defaults."""
        if self == ClusterConfig():
            return [
                "",
                '# Runs on a Ray cluster instead of this machine (README: "Past one machine"):',
                "# [cluster]",
                '# backend = "ray"',
                '# address = "http://HEAD:8265"    # or "local": the server starts a one-node Ray itself',
            ]
        lines = ["", "[cluster]"]
        for key, value in asdict(self).items():
            lines.append(f"# {key} = (default)" if value is None else f"{key} = {_toml_value(value)}")
        return lines


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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

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
        if "cluster" in known:
            known["cluster"] = ClusterConfig.parse(known["cluster"], path)
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
            if key == "cluster":
                continue  # a table: after every top-level key
            lines.append(f"# {key} = (default)" if value is None else f"{key} = {_toml_value(value)}")
        return "\n".join(lines + self.cluster.to_toml()) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, list):
        return f"[{', '.join(_toml_str(v) for v in value)}]"
    return _toml_str(value) if isinstance(value, str) else str(value)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
