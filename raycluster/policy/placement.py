"""Gang placement: can a set of bundles be placed on per-node free resources under a placement
strategy, and where. Pure functions, no Ray.

``place`` is the greedy first fit Ray's placement is approximated by: nodes in order of most free
GPUs, then most free CPUs, then node id; PACK fills the nodes a gang already uses first, SPREAD the
least used, STRICT_SPREAD one bundle a node, STRICT_PACK all on one node. ``FreeView`` makes the
same choices for many gangs in a row (one admission pass) without sorting or copying every node for
each (tests/unit/test_admission_property.py holds it to the straightforward version).
"""

from __future__ import annotations

import bisect
import math

Resources = dict[str, float]

_EPS = 1e-9
_BUCKETED = ("GPU", "CPU")  # the resources FreeView orders nodes by


def shape_of(bundles) -> tuple | None:
    """The one bundle of a gang of identical bundles as a hashable key; None if the bundles differ."""
    first = bundles[0] if bundles else None
    if first is None or any(b != first for b in bundles[1:]):
        return None
    return tuple(sorted(first.items()))


class FreeView:
    """Free resources per node during one decision pass, built for many placements.

    * Copy-on-write: a node's dict is copied only when a placement takes from it.
    * Nodes in placement order — most free GPUs, then most free CPUs, then node id — kept in
      buckets of equal (free GPU, free CPU), the buckets in order, each bucket's nodes sorted by id:
      a placement moves a node from one bucket to another (bisect), instead of sorting every node
      for every gang tried.
    * First fit scans buckets in order and stops at the first bucket with fewer free GPUs than the
      bundle needs (every later one has fewer still), skipping buckets with too few free CPUs: a gang
      that cannot fit on a full cluster is refused after a look at the buckets, not every node.
    The choices are exactly those of the greedy placement of ``place`` (same node order, same
    first-fit choices): a bucket's numbers are an upper bound for its nodes, also while a gang
    being tried has taken from some of them.
    """

    def __init__(self, free_by_node: dict[str, Resources]):
        self._base = free_by_node
        self._own: dict[str, Resources] = {}
        where = self._where = {n: (-r.get("GPU", 0.0), -r.get("CPU", 0.0)) for n, r in free_by_node.items()}
        buckets: dict[tuple, list[str]] = {}
        for n in sorted(where):
            buckets.setdefault(where[n], []).append(n)
        self._buckets = buckets
        self._bkeys = sorted(buckets)
        self._shapes: dict[tuple, tuple] = {}  # shape -> (needs, GPU and CPU thresholds, only those?)

    def get(self, node: str) -> Resources:
        return self._own.get(node) or self._base[node]

    def snapshot(self) -> dict[str, Resources]:
        return {n: dict(self.get(n)) for n in self._base}

    def _order_key(self, node: str) -> tuple:
        return (self._where[node], node)

    def _set(self, node: str, free: Resources) -> None:
        self._own[node] = free
        old, new = self._where[node], (-free.get("GPU", 0.0), -free.get("CPU", 0.0))
        if old == new:
            return
        buckets, bkeys = self._buckets, self._bkeys
        members = buckets[old]
        del members[bisect.bisect_left(members, node)]
        if not members:
            del buckets[old]
            del bkeys[bisect.bisect_left(bkeys, old)]
        members = buckets.get(new)
        if members is None:
            buckets[new] = [node]
            bisect.insort(bkeys, new)
        else:
            bisect.insort(members, node)
        self._where[node] = new

    def _take(self, node: str, b: Resources, times: int) -> None:
        r = self._own.get(node)
        if r is None:  # (the view's own copy, changed in place from then on)
            r = self._own[node] = dict(self._base[node])
        if times == 1:
            for k, v in b.items():
                r[k] = r.get(k, 0.0) - v
        else:
            for k, v in b.items():
                x = r.get(k, 0.0)
                for _ in range(times):  # one subtraction a bundle, as the greedy placement does
                    x -= v
                r[k] = x
        self._set(node, r)

    def _take_many(self, b: Resources, need: list, nodes: list[str], n: int, rounds: bool = False):
        """``n`` bundles ``b`` on ``nodes`` (in order, each fits one at least), as the greedy does:
        PACK fills each node in turn; SPREAD (``rounds``) gives one to each node that still fits,
        round after round. None (nothing taken) if they do not hold ``n``."""
        room = [_room(need, self._own.get(node) or self._base[node]) for node in nodes]
        if sum(room) < n:
            return None
        if not rounds:
            counts, left = [], n
            for node, c in zip(nodes, room):
                c = min(c, left)
                counts.append(c)
                left -= c
                if not left:
                    break
            assignment = [node for node, c in zip(nodes, counts) for _ in range(c)]
        else:
            counts, assignment, level = [0] * len(nodes), [], 0
            while len(assignment) < n:
                for i, node in enumerate(nodes):
                    if room[i] > level and len(assignment) < n:
                        counts[i] += 1
                        assignment.append(node)
                level += 1
        for node, c in zip(nodes, counts):
            if c:
                self._take(node, b, c)
        return assignment

    def _first_n(self, shape: tuple, b: Resources, n: int) -> tuple[list[str], list]:
        """The first ``n`` nodes in order that one bundle ``b`` fits (fewer if there are not), and
        the bundle's needs."""
        info = self._shapes.get(shape)
        if info is None:
            need = _need(b)
            gpu, cpu = b.get("GPU", 0.0), b.get("CPU", 0.0)
            info = self._shapes[shape] = (need, gpu - _EPS if gpu > 0 else -math.inf,
                                          cpu - _EPS if cpu > 0 else -math.inf,
                                          all(k in _BUCKETED for k, _v in need))
        need, gpu, cpu, whole = info
        buckets, own, base = self._buckets, self._own, self._base
        found: list[str] = []
        for bk in self._bkeys:
            if -bk[0] < gpu:
                break
            if -bk[1] < cpu:
                continue
            members = buckets[bk]
            if whole:  # needing only GPUs and CPUs, it fits every node of a bucket it fits
                found.extend(members[:n - len(found)])
            else:
                for node in members:
                    r = own.get(node) or base[node]
                    if all(r.get(k, 0.0) + _EPS >= v for k, v in need):
                        found.append(node)
                        if len(found) == n:
                            break
            if len(found) == n:
                break
        return found, need

    def place(self, bundles, strategy: str, shape: tuple | None = None) -> list[str] | None:
        """Place the gang greedily (exactly as ``place``); take its resources if it fits. ``shape``:
        the gang's one bundle as a key when all its bundles are identical (QueuedJob.shape)."""
        if shape is not None and strategy != "STRICT_PACK":
            # identical bundles: the greedy's choices worked out in one scan
            b, n = bundles[0], len(bundles)
            nodes, need = self._first_n(shape, b, n)
            if len(nodes) >= n:  # one each: what STRICT_SPREAD and SPREAD do, and PACK where one fits
                if strategy == "PACK":
                    return self._take_many(b, need, nodes, n)
                for node in nodes:
                    self._take(node, b, 1)
                return nodes
            if strategy == "STRICT_SPREAD" or not nodes:
                return None
            return self._take_many(b, need, nodes, n, strategy == "SPREAD")
        # nodes in order at the start of this gang, as in ``place``: buckets change only after it
        buckets, bkeys = self._buckets, self._bkeys
        own, base = self._own, self._base
        trial: dict[str, Resources] = {}

        def fits(need: list, n: str) -> bool:
            r = trial.get(n) or own.get(n) or base[n]
            for k, v in need:
                if r.get(k, 0.0) + _EPS < v:
                    return False
            return True

        def first(b: Resources, need: list, ok=None, count: int = 0):
            """The first node in order that ``ok`` accepts (None: any) and that ``b`` fits
            (``count``: the first ``count`` such nodes, a list)."""
            gpu, cpu = b.get("GPU", 0.0), b.get("CPU", 0.0)
            gpu = gpu - _EPS if gpu > 0 else -math.inf  # (a need of 0 fits even a negative free amount)
            cpu = cpu - _EPS if cpu > 0 else -math.inf
            # needing only GPUs and CPUs, a bundle fits every node of a bucket it fits (but those
            # this gang has taken from already)
            whole = ok is None and not trial and all(k in _BUCKETED for k, _v in need)
            found: list[str] = []
            for bk in bkeys:
                if -bk[0] < gpu:
                    break
                if -bk[1] < cpu:
                    continue
                members = buckets[bk]
                if whole:
                    if not count:
                        return members[0]
                    found.extend(members[:count - len(found)])
                    if len(found) == count:
                        return found
                    continue
                for n in members:
                    if (ok is None or ok(n)) and fits(need, n):
                        if not count:
                            return n
                        found.append(n)
                        if len(found) == count:
                            return found
            return found if count else None

        def take(n: str, b: Resources) -> None:
            r = trial.get(n)
            if r is None:
                r = trial[n] = dict(own.get(n) or base[n])
            for k, v in b.items():
                r[k] = r.get(k, 0.0) - v

        assignment: list[str] = []
        if strategy == "STRICT_PACK":
            total: Resources = {}
            for b in bundles:
                for k, v in b.items():
                    total[k] = total.get(k, 0.0) + v
            chosen = first(total, _need(total))
            if chosen is None:
                return None
            take(chosen, total)
            assignment = [chosen] * len(bundles)
        else:
            used: dict[str, int] = {}

            def unused(n: str) -> bool:
                return n not in used

            for b in bundles:
                need = _need(b)
                chosen = None
                if strategy == "STRICT_SPREAD":
                    chosen = first(b, need, unused)
                elif strategy == "SPREAD":  # least used first, stable in node order
                    for level in sorted({0, *used.values()}):
                        chosen = first(b, need, lambda n: used.get(n, 0) == level)  # noqa: B023 (used at once)
                        if chosen is not None:
                            break
                else:  # PACK: nodes this gang already uses first, in node order
                    in_use = sorted(used, key=self._order_key) if len(used) > 1 else used
                    chosen = next((n for n in in_use if fits(need, n)), None)
                    if chosen is None:
                        chosen = first(b, need, unused)
                if chosen is None:
                    return None
                take(chosen, b)
                used[chosen] = used.get(chosen, 0) + 1
                assignment.append(chosen)
        for n, r in trial.items():
            self._set(n, r)
        return assignment


def _need(bundle: Resources) -> list[tuple[str, float]]:
    """What a bundle needs (the resources it asks a positive amount of)."""
    return [(k, v) for k, v in bundle.items() if v > 0]


def _room(need: list[tuple[str, float]], free: Resources) -> int:
    """How many bundles of these needs fit in ``free`` one after another (subtracting each, as the
    greedy placement does, so float rounding decides exactly as it does)."""
    if not need:
        return 1 << 30
    m = None
    for k, v in need:
        x, c = free.get(k, 0.0), 0
        while x + _EPS >= v:
            x -= v
            c += 1
            if m is not None and c >= m:
                break
        m = c if m is None else min(m, c)
    return m


def place(bundles: tuple[Resources, ...] | list[Resources], free_by_node: dict[str, Resources],
          strategy: str) -> tuple[list[str], dict[str, Resources]] | None:
    """Return (node per bundle, remaining free) if the gang fits now, else None."""
    view = FreeView(free_by_node)
    assignment = view.place(list(bundles), strategy, shape_of(bundles))
    return None if assignment is None else (assignment, view.snapshot())


def infeasible_reason(bundles: list[Resources], strategy: str, total_by_node: dict[str, Resources]) -> str | None:
    """Why this gang can never be placed on a cluster of these node totals (None if it can)."""
    if not total_by_node:
        return "the cluster has no nodes"
    if place(bundles, total_by_node, strategy) is not None:
        return None
    need: Resources = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    have: Resources = {}
    for r in total_by_node.values():
        for k, v in r.items():
            have[k] = have.get(k, 0.0) + v
    short = [f"{k} {need[k]:g} > {have.get(k, 0.0):g}" for k in sorted(need) if need[k] > have.get(k, 0.0) + _EPS]
    if short:
        return "the gang needs more than the whole cluster has: " + ", ".join(short)
    return (f"no way to place {len(bundles)} bundles of {bundles[0]} with strategy {strategy} "
            f"on {len(total_by_node)} nodes")
