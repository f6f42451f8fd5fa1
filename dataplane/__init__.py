"""weavefast: a userspace overlay-network dataplane for containers."""

__version__ = "0.1.0"
