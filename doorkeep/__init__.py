"""doorkeep: the I/O-free core every part shares (site model, rules, wire contract)."""

__version__ = "0.1.0"
