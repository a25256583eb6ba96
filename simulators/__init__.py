"""doorkeep simulators package."""
