"""doorkeep server package."""
