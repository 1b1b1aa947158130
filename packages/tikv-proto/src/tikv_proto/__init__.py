"""TiKV and PD protocol schema, wire-compatible with upstream kvproto.

The ``.proto`` files under ``packages/tikv-proto/proto/`` are this project's own, declaring
the messages, enums and RPCs that the clients and the mock store use with exactly the names,
field numbers and types of github.com/pingcap/kvproto. The generated modules are importable
as ``tikv_proto.kvrpcpb_pb2``, ``tikv_proto.tikvpb_pb2_grpc`` and so on.
"""

__version__ = "0.1.0"
