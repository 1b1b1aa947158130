"""An embedded TiKV-compatible cluster: PD and N TiKV stores, real gRPC servers on loopback.

``with MockCluster(stores=3) as cluster: cluster.pd_endpoints`` — see :mod:`tikv_mockstore.server`.
"""

from tikv_mockstore.server import MockCluster

__all__ = ["MockCluster", "__version__"]

__version__ = "0.1.0"
