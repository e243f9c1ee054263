"""NanoGrid: self-hosted function-as-a-service for private AI workloads."""

__version__ = "0.1.0"
