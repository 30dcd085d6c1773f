"""How our Ray nodes are marked: every node label, node name and kind marker resource, in one place.

Shared vocabulary (like ``constants.py``): the markets write these onto the nodes they start, the
node provider and the control plane read them back, the budget policy and its simulator reason with
the kind markers. Nothing here imports the rest of the package.

* Labels (Ray node labels, ``ray start --labels``): ``RENTAL_LABEL`` names the rental a rented node
  is; ``MARKET_LABEL`` / ``KIND_LABEL`` / ``PRICE_LABEL`` what the provider rented it as;
  ``SSH_HOST_LABEL`` the host of an SSH-market node; ``LOCAL_NODE_LABEL`` / ``ROLE_LABEL`` the
  embedded local cluster's own nodes; ``RAY_NODE_ID_LABEL`` Ray's own label of every node.
* Names: ``rented_node_name(rental_id)`` — the Ray node name of a rented node (``rc-<rental>``).
* Kind markers: every rented node carries ``KIND_RESOURCE_UNITS`` of a resource naming its kind; a
  gang that must run on one kind (``spot: only`` / ``never``) asks each bundle for
  ``KIND_BUNDLE_UNITS`` of it, so admission, Ray's placement and Ray's autoscaler all keep it off the
  other kind's nodes.
"""

from __future__ import annotations

from typing import Any

RAY_NODE_ID_LABEL = "ray.io/node-id"
RENTAL_LABEL = "raycluster.io/rental"
MARKET_LABEL = "raycluster.io/market"
KIND_LABEL = "raycluster.io/kind"
PRICE_LABEL = "raycluster.io/usd-per-hour"
SSH_HOST_LABEL = "raycluster.io/ssh-host"
LOCAL_NODE_LABEL = "raycluster.io/local-node"
ROLE_LABEL = "raycluster.io/role"

SPOT, ON_DEMAND = "spot", "on_demand"
KIND_RESOURCE = {SPOT: "raycluster_spot", ON_DEMAND: "raycluster_on_demand"}
KIND_RESOURCE_UNITS = 1000.0
KIND_BUNDLE_UNITS = 0.001


def rented_node_name(rental_id: str) -> str:
    return f"rc-{rental_id}"


def rental_of(node: dict[str, Any] | None) -> str | None:
    """The rental a Ray node (as ``read_nodes`` lists it, with ``labels``) is, or None."""
    return ((node or {}).get("labels") or {}).get(RENTAL_LABEL)
