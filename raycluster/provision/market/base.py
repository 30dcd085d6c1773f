"""What a GPU market is to us: one small interface, every outside call behind it.

Owns: ``Offer`` (a GPU type at a USD/hour price, spot or on-demand, and how many are to be had),
``NodeLaunch`` (what the node must run to join our Ray cluster: its environment, labels and
resources), ``Market`` (offers, rent, release, what we hold, preemption notices) and the market
errors. The node provider (``provision/node_provider.py``) drives markets through this interface
only, so it runs against the local market, an SSH host list or an HTTP marketplace alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from raycluster.errors import EXIT_INVALID, EXIT_NOT_FOUND, RayClusterError
from raycluster.labels import ON_DEMAND, SPOT

KINDS = (SPOT, ON_DEMAND)


class MarketError(RayClusterError):
    """A market refused or failed a call. ``retryable``: whether the same call may succeed later."""
    code = "market"


class CapacityExhausted(MarketError):
    """The market has no node of this type to rent now (it may later)."""
    code, retryable = "market_capacity", True


class BudgetExceeded(MarketError):
    """Renting would take the committed spend rate (every rental's USD/hour, starting ones
    included) past ``max_hourly_budget_usd``; it may fit once nodes are given back."""
    code, http_status, retryable = "budget_exceeded", 409, True


class MarketUnavailable(MarketError):
    """The market did not answer or answered with a server error; retry later."""
    code, retryable = "market_unavailable", True


class UnknownRental(MarketError):
    """The market rents out no such node to us."""
    code, http_status, exit_code = "market_unknown_node", 404, EXIT_NOT_FOUND


class MarketConfigError(MarketError):
    """The market's configuration is wrong (names the key); fix it, retrying will not help."""
    code, http_status, exit_code = "market_config", 422, EXIT_INVALID


@dataclass(frozen=True)
class Offer:
    market: str
    gpu_type: str
    kind: str  # SPOT | ON_DEMAND
    usd_per_hour: float
    gpus: int
    cpus: int
    available: int  # how many more can be rented now
    offer_id: str = ""  # the market's id for it (an HTTP marketplace's ask id)


@dataclass
class NodeLaunch:
    """What a rented machine must run to join our cluster as one Ray node."""
    rental_id: str
    node_type: str
    head_address: str
    env: dict[str, str] = field(default_factory=dict)  # RAY_CLOUD_INSTANCE_ID, RAY_NODE_TYPE_NAME, auth
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)  # custom resources, besides CPU/GPU


@dataclass(frozen=True)
class Notice:
    """A market's word that it will take a (spot) node back at ``deadline`` (epoch seconds)."""
    rental_id: str
    deadline: float
    reason: str = "preemption"


class Market(Protocol):
    name: str

    def offers(self) -> list[Offer]:
        """What can be rented now, with prices."""

    def rent(self, offer: Offer, launch: NodeLaunch) -> dict[str, Any]:
        """Rent one node of ``offer`` that runs ``launch``; its handle (market-specific, stored with
        the rental). Idempotent under ``launch.rental_id``. Raises ``MarketError`` on refusal."""

    def release(self, rental_id: str, handle: dict[str, Any]) -> None:
        """Stop paying for the node (idempotent: releasing a released node is not an error)."""

    def held(self) -> dict[str, dict[str, Any]]:
        """What the market says we hold and pay for now: rental id -> handle (for leak checks)."""

    def alive(self, rental_id: str, handle: dict[str, Any]) -> bool:
        """Whether the rented machine still runs."""

    def notices(self) -> list[Notice]:
        """Preemption notices for nodes we hold."""

    # optional: ``prices() -> {(gpu_type, kind): usd_per_hour}`` — what held nodes are charged now,
    # when that can differ from the price they were rented at (spot); see ``current_prices``


def current_prices(market: Market) -> dict[tuple[str, str], float]:
    """What the market charges held nodes now, by (GPU type, kind), from its ``prices()``; {} for a
    market without one (an SSH host's or a marketplace contract's price is fixed when rented)."""
    prices = getattr(market, "prices", None)
    return dict(prices()) if callable(prices) else {}
