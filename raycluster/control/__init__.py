"""The runtime actors (Coordinator, CheckpointManager) and their seams to Ray (RayOps, node info)."""
