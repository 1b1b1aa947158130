"""An embedded TiKV-compatible cluster: one PD and N TiKV stores, each a real gRPC server on loopback."""

__version__ = "0.1.0"
