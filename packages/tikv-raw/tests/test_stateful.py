"""Random operation sequences with region splits, against the pipeline double."""

from __future__ import annotations

from _raw_fake_router import FakeRouter
from _raw_model import RawEnv, make_machine
from hypothesis import HealthCheck, settings
from tikv_pd.sync import LoopThread
from tikv_raw import AsyncRawClient, RawClient

_loop = LoopThread(name="tikv-raw-stateful-test")


def _new_env() -> RawEnv:
    router = FakeRouter([b"t/b", b"t/x"])
    client = RawClient(AsyncRawClient(router), _loop, _owner=False)
    return RawEnv(client=client, split=router.split, prefix=b"t/")


RawModelOnFake = make_machine(_new_env)
RawModelOnFake.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRawModelOnFake = RawModelOnFake.TestCase
