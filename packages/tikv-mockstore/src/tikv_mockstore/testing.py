"""Helpers for tests that talk to a :class:`~tikv_mockstore.MockCluster` over real gRPC.

They build what a client would: PD stubs with the cluster id in the header, TiKV stubs per
store, and ``kvrpcpb.Context`` values routed by the cluster's current regions.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from tikv_proto import kvrpcpb_pb2, pdpb_pb2, pdpb_pb2_grpc, tikvpb_pb2_grpc

from tikv_mockstore._codec import encode_bytes
from tikv_mockstore.cluster import Region
from tikv_mockstore.server import MockCluster

__all__ = ["Stubs", "context_for"]


def context_for(
    region: Region,
    *,
    store_id: int | None = None,
    api_version: kvrpcpb_pb2.APIVersion.ValueType = kvrpcpb_pb2.V1,
) -> kvrpcpb_pb2.Context:
    """A request context for ``region`` addressed to its leader (or the peer on ``store_id``)."""
    peer = region.leader if store_id is None else region.peer_on(store_id)
    if peer is None:
        raise ValueError(f"region {region.id} has no peer on store {store_id}")
    ctx = kvrpcpb_pb2.Context(region_id=region.id, peer=peer.to_pb(), api_version=api_version)
    ctx.region_epoch.conf_ver = region.conf_ver
    ctx.region_epoch.version = region.version
    return ctx


class Stubs:
    """gRPC stubs for one mock cluster; close it (or use ``with``) to close the channels."""

    def __init__(self, cluster: MockCluster) -> None:
        self.cluster = cluster
        self._mu = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, address: str) -> grpc.Channel:
        """A cached insecure channel to ``address``."""
        with self._mu:
            ch = self._channels.get(address)
            if ch is None:
                ch = grpc.insecure_channel(
                    address,
                    options=[
                        ("grpc.max_receive_message_length", -1),
                        ("grpc.max_send_message_length", -1),
                    ],
                )
                self._channels[address] = ch
            return ch

    def pd(self, address: str | None = None) -> pdpb_pb2_grpc.PDStub:
        """A PD stub for ``address`` (default: the current PD leader)."""
        return pdpb_pb2_grpc.PDStub(self.channel(address or self.cluster.pd_address))

    def header(self) -> pdpb_pb2.RequestHeader:
        """A PD request header with the cluster id."""
        return pdpb_pb2.RequestHeader(cluster_id=self.cluster.cluster_id)

    def tikv(self, store_id: int) -> tikvpb_pb2_grpc.TikvStub:
        """A TiKV stub for store ``store_id``."""
        return tikvpb_pb2_grpc.TikvStub(self.channel(self.cluster.store_addresses[store_id]))

    def route(
        self,
        key: bytes,
        *,
        txn: bool = False,
        api_version: kvrpcpb_pb2.APIVersion.ValueType = kvrpcpb_pb2.V1,
    ) -> tuple[tikvpb_pb2_grpc.TikvStub, kvrpcpb_pb2.Context]:
        """The leader's stub and a context for the region holding ``key`` right now."""
        region = self.cluster.region_by_key(key, txn=txn)
        if region is None:
            raise LookupError(f"no region holds {key!r}")
        return self.tikv(region.leader_store_id), context_for(region, api_version=api_version)

    def close(self) -> None:
        """Close every channel."""
        with self._mu:
            channels = list(self._channels.values())
            self._channels.clear()
        for ch in channels:
            ch.close()

    def __enter__(self) -> Stubs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def encoded(key: bytes) -> bytes:
    """The memcomparable encoding of a transactional key (how region boundaries hold it)."""
    return encode_bytes(key)
