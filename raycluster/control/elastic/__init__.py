"""The Coordinator's renting side on an elastic cluster: the BudgetAutoscaler actor and its loop
(``budget_autoscaler.py``), its one seam to Ray, the provider and the Coordinator (``scaling.py``),
draining a node in Ray (``drain.py``, GcsClient.drain_node wrapped in one place), and what each
job's attempts held of rented nodes and cost (``ledger.py``)."""
