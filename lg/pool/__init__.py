"""Warm VM pools: ready VMs handed out once each, refilled in the background from template snapshots."""
