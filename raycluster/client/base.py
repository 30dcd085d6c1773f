"""What every client shares: turning a spec argument into a dict, and the one follow/wait loop.

Owns: ``ClientBase`` — ``submit`` normalisation (a path, a JobSpec, a dict or JSON text, validated
locally first with the error the server would give) and ``wait`` — and ``follow_jobs``, the one
loop that polls jobs until they are terminal, riding out a control plane that is briefly
unavailable (a Coordinator restarting). ``raycluster submit --wait``, ``raycluster demo`` and
``python -m raycluster.submit --follow`` all use it. Imports nothing from Ray.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Callable

from raycluster import constants as C
from raycluster.errors import ClusterUnavailable, InvalidJobSpec
from raycluster.client.packages import needs_packaging, package_runtime_env
from raycluster.spec import JobSpec, check_before_packaging, parse_spec, read_spec_file
from raycluster.store.lifecycle import JobState


def follow_jobs(get: Callable[[str], dict], job_ids: list[str], *, timeout_s: float | None = None,
                poll_s: float = 0.5, on_poll: Callable[[list[dict]], None] | None = None,
                on_unavailable: Callable[[ClusterUnavailable], None] | None = None,
                unavailable_grace_s: float | None = None) -> list[dict]:
    """Poll ``get`` until every job is terminal; return their last states.

    Stops early at ``timeout_s`` (returning what it has). While the control plane is unavailable it
    keeps polling (calling ``on_unavailable``) — until ``unavailable_grace_s`` of continuous
    unavailability or the timeout, then re-raises."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    down_since: float | None = None
    while True:
        try:
            jobs = [get(j) for j in job_ids]
            down_since = None
        except ClusterUnavailable as exc:
            now = time.monotonic()
            down_since = down_since or now
            if (deadline is not None and now > deadline) or (
                    unavailable_grace_s is not None and now - down_since > unavailable_grace_s):
                raise
            if on_unavailable:
                on_unavailable(exc)
            time.sleep(poll_s)
            continue
        if on_poll:
            on_poll(jobs)
        if all(JobState(j["state"]).terminal for j in jobs) or (deadline is not None and time.monotonic() > deadline):
            return jobs
        time.sleep(poll_s)


class ClientBase:
    """The calls every client has; subclasses implement ``_submit`` and ``get`` & co."""

    key_prefix = "client"

    # the uploaded packages of the last submit (content-addressed: an unchanged directory is not sent again)
    last_uploaded: list[str] = []

    def submit(self, spec: JobSpec | dict | str | Path, idempotency_key: str | None = None,
               base_dir: str | Path | None = None) -> dict:
        """Submit a spec (a file path, a JobSpec, a dict or JSON text). A key per submit (the same
        on every retry of it) makes retries safe from duplicates. Local ``runtime_env`` directories
        (``working_dir``, ``py_modules``; relative to ``base_dir``, default the current directory)
        are uploaded as packages first."""
        spec = self._normalise(spec, base_dir)
        return self._submit(spec, idempotency_key or f"{self.key_prefix}-{uuid.uuid4().hex}")

    def create_schedule(self, spec: JobSpec | dict | str | Path, base_dir: str | Path | None = None) -> dict:
        """Create a scheduled job from a spec with ``schedule`` (local code uploaded as for submit)."""
        # one key for this create, the same on every retry: a retry never makes a second schedule
        return self._call_schedules("create_schedule", self._normalise(spec, base_dir),
                                    f"{self.key_prefix}-{uuid.uuid4().hex}")

    def list_schedules(self) -> list[dict]:
        return self._call_schedules("list_schedules")

    def get_schedule(self, schedule_id: str) -> dict:
        return self._call_schedules("get_schedule", schedule_id)

    def pause_schedule(self, schedule_id: str) -> dict:
        return self._call_schedules("pause_schedule", schedule_id)

    def resume_schedule(self, schedule_id: str) -> dict:
        return self._call_schedules("resume_schedule", schedule_id)

    def delete_schedule(self, schedule_id: str) -> dict:
        return self._call_schedules("delete_schedule", schedule_id)

    def _call_schedules(self, method: str, *args):
        raise NotImplementedError

    def package_store(self):
        """Where this client uploads a spec's local code (``client.packages.PackageStore``)."""
        raise NotImplementedError

    def _normalise(self, spec, base_dir: str | Path | None = None) -> dict:
        """A spec argument as the dict the server takes (local code packaged), validated here first."""
        if isinstance(spec, Path):
            spec = read_spec_file(spec)
        if isinstance(spec, dict) and needs_packaging(spec.get("runtime_env")):
            check_before_packaging(spec)  # a bad spec costs no upload
            env, self.last_uploaded = package_runtime_env(spec["runtime_env"], self.package_store(), base_dir)
            spec = {**spec, "runtime_env": env}
        else:
            self.last_uploaded = []
        if isinstance(spec, JobSpec):
            spec = spec.model_dump(mode="json")
        elif isinstance(spec, (str, bytes)):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise InvalidJobSpec(f"spec is not valid JSON: {exc}") from None
        parse_spec(spec)  # fail fast, locally, with the same error the server would give
        return spec

    def submit_many(self, specs: list, idempotency_keys: list[str] | None = None,
                    batch_size: int | None = None) -> list[dict]:
        """Submit many specs in batches of ``batch_size`` (one call and one transaction each, all or
        none per batch), answering the jobs in order. A key per spec (made here when not given, the
        same on every retry of a batch) makes retries safe from duplicates."""
        if idempotency_keys is not None and len(idempotency_keys) != len(specs):
            raise InvalidJobSpec("one idempotency key per spec", field="idempotency_keys")
        batch_size = C.SUBMIT_BATCH_MAX if batch_size is None else batch_size
        if not 1 <= batch_size <= C.SUBMIT_BATCH_MAX:
            raise InvalidJobSpec(f"batch_size must be 1-{C.SUBMIT_BATCH_MAX}", field="batch_size")
        prefix = f"{self.key_prefix}-{uuid.uuid4().hex}"
        items = []
        for i, spec in enumerate(specs):
            spec = self._normalise(spec)
            key = idempotency_keys[i] if idempotency_keys is not None else f"{prefix}-{i}"
            items.append({"spec": spec, "idempotency_key": key})
        out: list[dict] = []
        for i in range(0, len(items), batch_size):
            out += self._submit_many(items[i:i + batch_size])
        return out

    def _submit(self, spec: dict, idempotency_key: str) -> dict:
        raise NotImplementedError

    def _submit_many(self, items: list[dict]) -> list[dict]:
        raise NotImplementedError

    def get(self, job_id: str) -> dict:
        raise NotImplementedError

    def wait(self, job_ids: list[str], timeout_s: float = 600.0, poll_s: float = 0.5,
             on_poll: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """Poll until every job is terminal or ``timeout_s`` passes."""
        return follow_jobs(self.get, job_ids, timeout_s=timeout_s, poll_s=poll_s, on_poll=on_poll)


__all__ = ["ClientBase", "follow_jobs"]
