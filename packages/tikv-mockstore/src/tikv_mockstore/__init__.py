"""An embedded TiKV-compatible cluster.

One PD and N TiKV stores, each a real gRPC server on loopback, speaking the kvproto wire
protocol as TiKV and PD do.
"""

__version__ = "0.1.0"
