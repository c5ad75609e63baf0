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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InputSnapshot:
    """What the manifest records of one input: where it was, its content hash and size."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: str, data: builtins.bytes) -> InputSnapshot:
        return cls(path, hashlib.sha256(data).hexdigest(), len(data))

    def __contains__(self, key: object) -> bool:
        """``"trace_id" not in snapshot``, as the second seed checks a snapshot's keys."""
        return key in _SNAPSHOT_FIELDS


_SNAPSHOT_FIELDS = frozenset(f.name for f in fields(InputSnapshot))


def compute_inputs_hash(snapshots: Mapping[str, InputSnapshot | str]) -> str:
    """SHA-256 over the sorted (name, content hash) pairs: nothing else enters it.

    Values are snapshots or their content hashes (``{"brief": "abc123"}``, as the second
    seed passes them); the same hashes give the same result either way."""
    hashes: dict[str, str] = {}
    for name, snap in snapshots.items():
        digest = snap if isinstance(snap, str) else getattr(snap, "sha256", None)
        if not isinstance(digest, str):
            raise TypeError(f"input snapshot {name!r}: expected an InputSnapshot or its "
                            f"sha256 string, got {type(snap).__name__}")
        hashes[str(name)] = digest
    canonical = json.dumps(hashes, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derive_run_id(inputs_hash: str) -> str:
    """The run id: a function of the inputs hash alone, so the same inputs give the same id."""
    return hashlib.sha256(f"run:{inputs_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunManifest:
    job_id: str
    job_type: str | None
    run_id: str
    inputs_hash: str
    input_snapshots: Mapping[str, InputSnapshot]
    status: str | None = None
    artifacts: tuple[str, ...] = ()
    langfuse_trace_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_trace(self, trace: object) -> RunManifest:
        """This manifest with the trace id at its root (unchanged without a trace).
        ``trace`` is a trace id string, what ``trace_pipeline_execution`` returned (the
        pair or its trace), a ``TraceContext``, or None."""
        trace_id = trace if isinstance(trace, str) else _trace_id_of(trace)
        if not trace_id:
            return self
        return replace(self, langfuse_trace_id=trace_id)

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
        """Load a manifest; ``langfuse_trace_id`` and ``job_type`` may be absent (older or
        untraced runs; the second seed's manifests have no job type)."""
        known = {"job_id", "job_type", "run_id", "inputs_hash", "input_snapshots", "status",
                 "artifacts", "langfuse_trace_id"}
        return cls(
            job_id=data["job_id"], job_type=data.get("job_type"), run_id=data["run_id"],
            inputs_hash=data["inputs_hash"],
            input_snapshots={name: InputSnapshot(**snap)
                             for name, snap in data["input_snapshots"].items()},
            status=data.get("status"), artifacts=tuple(data.get("artifacts", ())),
            langfuse_trace_id=data.get("langfuse_trace_id"),
            extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def from_file(cls, path: str | Path) -> RunManifest:
        """Load a ``manifest.json``."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def verify(self) -> None:
        """Raise ValueError if the run id or inputs hash do not follow from the snapshots."""
        inputs_hash = compute_inputs_hash(self.input_snapshots)
        if inputs_hash != self.inputs_hash:
            raise ValueError(f"inputs_hash {self.inputs_hash} does not match the snapshots "
                             f"({inputs_hash})")
        if derive_run_id(inputs_hash) != self.run_id:
            raise ValueError(f"run_id {self.run_id} is not derived from the inputs hash")


def _trace_id_of(trace: object) -> str | None:
    """The trace id of a governance trace object, without importing governance."""
    if trace is None:
        return None
    if isinstance(trace, tuple):  # trace_pipeline_execution's (trace, trace_id)
        return trace[1] if len(trace) == 2 and isinstance(trace[1], str) else None
    try:
        found = getattr(trace, "trace_id", None)
    except Exception:  # noqa: BLE001 - a hostile object: no trace id
        return None
    return found if isinstance(found, str) else None
