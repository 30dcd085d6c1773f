"""The Coordinator's renting side on an elastic cluster: the BudgetAutoscaler actor and its loop
(``budget_autoscaler.py``), its one seam to Ray, the provider and the Coordinator (``scaling.py``),
and what each job's attempts held of rented nodes and cost (``ledger.py``). Draining a node in Ray
is ``provision/drain.py``'s (the node provider drains too, and provision imports nothing of control)."""
