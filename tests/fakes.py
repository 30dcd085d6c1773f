"""Fakes shared by the unit tests: a GangOps that records what the control loop asks of Ray, and a
settable clock. The real RayOps is exercised by the cluster tests."""

from __future__ import annotations

import itertools

from raycluster.control.rayops import GangOps
from raycluster.policy.recovery import RankResult, RankStatus
from raycluster.store.lifecycle import Cause


class FakePG:
    def __init__(self, name, bundles):
        self.name, self.bundles, self.ready, self.removed = name, bundles, False, False


class FakeOps(GangOps):
    def __init__(self, nodes=3):
        self.total = {f"n{i}": {"CPU": 2.0, "GPU": 1.0} for i in range(nodes)}
        self.pgs: dict[str, FakePG] = {}
        self.tasks: dict[int, RankResult] = {}
        self.results: dict[int, dict] = {}
        self.cancelled: list[int] = []
        self._ids = itertools.count()
        self.bad_entrypoints = set()
        self.auto_ready = True
        self.watched = []
        self.pinned = []
        self.requested = []
        self.launches: dict[int, dict] = {}
        self.addresses: dict[str, str] = {}  # node -> its host's address (default: all on one host)

    def _assignment(self) -> dict[str, list[str]]:
        """Each placed group's nodes: the bundles of the ready groups, in creation order, one per node."""
        names, out, i = list(self.total), {}, 0
        for name, p in self.pgs.items():
            if not p.removed and p.ready:
                out[name] = names[i:i + len(p.bundles)]
                i += len(p.bundles)
        return out

    def nodes(self):
        free = {n: dict(r) for n, r in self.total.items()}
        for used in self._assignment().values():
            for n in used:
                free[n] = {"CPU": 1.0, "GPU": 0.0}
        return [{"id": n, "alive": True, "is_head": False, "address": self.addresses.get(n, "127.0.0.1"),
                 "hostname": "h", "labels": {},
                 "resources_total": dict(r), "resources_free": free[n]} for n, r in self.total.items()]

    def create_pg(self, name, bundles, strategy, exclude_nodes=None):
        pg = self.pgs[name] = FakePG(name, bundles)
        pg.exclude = list(exclude_nodes or [])
        pg.ready = self.auto_ready
        return pg

    def get_pg(self, name):
        pg = self.pgs.get(name)
        return pg if pg and not pg.removed else None

    def pg_ready(self, pg):
        return pg.ready

    def pg_nodes(self, pg):
        return list(getattr(pg, "nodes", None) or self._assignment().get(pg.name, []))

    def remove_pg(self, pg):
        if pg is not None:
            pg.removed = True

    def remove_pg_by_name(self, name):
        self.remove_pg(self.get_pg(name))

    def our_pg_names(self):
        return {n: n for n, p in self.pgs.items() if not p.removed}

    def launch_rank(self, pg, bundle_index, resources, launch, runtime_env, task_name):
        ref = next(self._ids)
        self.tasks[ref] = RankResult(launch["rank"], RankStatus.RUNNING)
        self.launches[ref] = launch
        return ref

    def poll(self, refs):
        return [RankResult(i, self.tasks[r].status, self.tasks[r].error, self.tasks[r].cause,
                           self.results.get(r, {"ok": True}) if self.tasks[r].status == RankStatus.OK else None)
                for i, r in enumerate(refs)]

    def cancel(self, refs):
        for r in refs:
            self.cancelled.append(r)
            self.tasks[r] = RankResult(0, RankStatus.CANCELLED)

    def watch(self, refs, callback):
        self.watched.extend(refs)

    def pin_uris(self, uris, expiration_s):
        self.pinned.append((tuple(uris), expiration_s))

    def request_resources(self, bundles):
        self.requested.append([dict(b) for b in bundles])

    def ensure_monitor(self, node_id, coordinator, disk_path):
        self.monitors = getattr(self, "monitors", []) + [node_id]
        return node_id

    def check_entrypoint(self, ep, runtime_env, timeout_s):
        return "no such module" if ep in self.bad_entrypoints else None

    # test helpers
    def finish(self, refs, status=RankStatus.OK, error=None, cause=None):
        if status == RankStatus.SYSTEM_ERROR and cause is None:
            cause = Cause.NODE_LOST
        for r in refs:
            self.tasks[r] = RankResult(0, status, error, cause)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeMarket:
    """A market in memory (the provider's unit tests): a price table, what it rents out to us,
    failures to inject. The local market (real processes) is exercised by the cluster tests."""

    def __init__(self, name="fake", capacity=3):
        from raycluster.provision.market.base import Offer

        self.name = name
        self.capacity = capacity
        self._offer = Offer
        self.running: dict[str, dict] = {}
        self.launches: dict[str, object] = {}
        self.dead: set[str] = set()
        self.refuse: Exception | None = None
        self.released: list[str] = []
        self.pending_notices: list = []
        self.spot_usd_per_hour = 0.2  # moves like a spot market's price (tests set it)

    def offers(self):
        left = max(0, self.capacity - len(self.running))
        return [self._offer(self.name, "T4", "spot", self.spot_usd_per_hour, 1, 2, left, "T4/spot"),
                self._offer(self.name, "T4", "on_demand", 0.5, 1, 2, left, "T4/on_demand")]

    def rent(self, offer, launch):
        if self.refuse is not None:
            raise self.refuse
        if launch.rental_id not in self.running:
            self.running[launch.rental_id] = {"instance": f"i-{len(self.launches)}", "kind": offer.kind}
            self.launches[launch.rental_id] = launch
        return self.running[launch.rental_id]

    def release(self, rental_id, handle):
        if self.running.pop(rental_id, None) is not None:
            self.released.append(rental_id)

    def held(self):
        return dict(self.running)

    def alive(self, rental_id, handle):
        return rental_id in self.running and rental_id not in self.dead

    def notices(self):
        return list(self.pending_notices)

    def prices(self):
        return {("T4", "spot"): self.spot_usd_per_hour, ("T4", "on_demand"): 0.5}


def record_spot_cluster(state_dir, max_workers: int, spot_max_workers: int) -> None:
    """Record the autoscaling config of an elastic local cluster in ``state_dir`` (as ``raycluster up
    --local --elastic`` does): a head with no CPUs and one spot node type of 2 CPUs and 1 GPU."""
    import json

    from raycluster.provision.local.record import cluster_dir

    cluster_dir(state_dir).mkdir(parents=True)
    (cluster_dir(state_dir) / "autoscaling.json").write_text(json.dumps({
        "max_workers": max_workers, "head_node_type": "head",
        "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                 "gpu_spot": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": spot_max_workers}}}))
