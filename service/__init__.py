"""selfinstruct: async, high-throughput Self-Instruct data generation."""

__version__ = "0.1.0"
