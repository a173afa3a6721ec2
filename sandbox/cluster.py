"""What the server knows of the cluster its runs go to, as data the tools show (no import of Ray)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ClusterNode(BaseModel):
    name: str
    ip: str
    alive: bool
    cpus: float
    gpus: int


class ClusterGpu(BaseModel):
    node: str = Field(description="the node's address")
    index: int = Field(description="the GPU's id on its node, as the cluster gives it to a job")
    run_id: str | None = Field(description="the running experiment that holds it, if any")


class ClusterReport(BaseModel):
    address: str = Field(description="the cluster's Jobs API")
    reachable: bool
    reason: str | None = Field(description="why the cluster could not be asked, when it could not")
    nodes: list[ClusterNode]
    gpus: list[ClusterGpu]
    placements: dict[str, str] = Field(description="run id -> where it runs (node, GPU)")
