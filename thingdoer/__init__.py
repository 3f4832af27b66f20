"""thingdoer: a small, real container orchestrator (see docs/architecture.md)."""

__version__ = "0.1.0"
