"""doorkeep edge package."""
