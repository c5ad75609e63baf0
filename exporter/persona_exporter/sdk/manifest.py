"""A run manifest that keeps observability out of determinism.

The inputs hash is computed from the input snapshots' content hashes only; the run id is
derived from the inputs hash; both exist before any trace does. The trace id is written
at the manifest's root (``langfuse_trace_id``), optional so that manifests written before
tracing existed - or with tracing off - still load, and it never enters the inputs hash or
an input snapshot. Timestamps are likewise kept out of both.

    snapshots = {name: InputSnapshot.of(name, data) for name, data in inputs.items()}
    inputs_hash = compute_inputs_hash(snapshots)
    manifest = RunManifest(job_id, job_type, derive_run_id(inputs_hash), inputs_hash, snapshots)
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .governance import PipelineTrace


@dataclass(frozen=True)
class InputSnapshot:
    """What the manifest records of one input: where it was, its content hash and size."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: str, data: builtins.bytes) -> InputSnapshot:
        return cls(path, hashlib.sha256(data).hexdigest(), len(data))


def compute_inputs_hash(snapshots: Mapping[str, InputSnapshot]) -> str:
    """SHA-256 over the sorted (name, content hash) pairs: nothing else enters it."""
    canonical = json.dumps({name: snap.sha256 for name, snap in snapshots.items()},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derive_run_id(inputs_hash: str) -> str:
    """The run id: a function of the inputs hash alone, so the same inputs give the same id."""
    return hashlib.sha256(f"run:{inputs_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunManifest:
    job_id: str
    job_type: str
    run_id: str
    inputs_hash: str
    input_snapshots: Mapping[str, InputSnapshot]
    status: str | None = None
    artifacts: tuple[str, ...] = ()
    langfuse_trace_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_trace(self, trace: PipelineTrace | None) -> RunManifest:
        """This manifest with the trace id at its root (unchanged without a trace)."""
        if trace is None or trace.trace_id is None:
            return self
        return replace(self, langfuse_trace_id=trace.trace_id)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job_id": self.job_id, "job_type": self.job_type, "run_id": self.run_id,
            "inputs_hash": self.inputs_hash,
            "input_snapshots": {name: {"path": s.path, "sha256": s.sha256, "bytes": s.bytes}
                                for name, s in sorted(self.input_snapshots.items())},
            "status": self.status, "artifacts": list(self.artifacts), **self.extra,
        }
        if self.langfuse_trace_id is not None:
            data["langfuse_trace_id"] = self.langfuse_trace_id
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunManifest:
        """Load a manifest; ``langfuse_trace_id`` may be absent (older or untraced runs)."""
        known = {"job_id", "job_type", "run_id", "inputs_hash", "input_snapshots", "status",
                 "artifacts", "langfuse_trace_id"}
        return cls(
            job_id=data["job_id"], job_type=data["job_type"], run_id=data["run_id"],
            inputs_hash=data["inputs_hash"],
            input_snapshots={name: InputSnapshot(**snap)
                             for name, snap in data["input_snapshots"].items()},
            status=data.get("status"), artifacts=tuple(data.get("artifacts", ())),
            langfuse_trace_id=data.get("langfuse_trace_id"),
            extra={k: v for k, v in data.items() if k not in known})

    def verify(self) -> None:
        """Raise ValueError if the run id or inputs hash do not follow from the snapshots."""
        inputs_hash = compute_inputs_hash(self.input_snapshots)
        if inputs_hash != self.inputs_hash:
            raise ValueError(f"inputs_hash {self.inputs_hash} does not match the snapshots "
                             f"({inputs_hash})")
        if derive_run_id(inputs_hash) != self.run_id:
            raise ValueError(f"run_id {self.run_id} is not derived from the inputs hash")
