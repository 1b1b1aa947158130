"""Suite-wide test setup (``pytest packages``, ``pytest tests-integration``).

Hypothesis: no per-example deadline and no "too slow" health check. Both are wall-clock
assertions (200 ms per example by default); on a loaded 2-core CI machine a GC pause or a
descheduled thread fails them — as ``DeadlineExceeded`` or ``Flaky`` ("unreliable test
timings") — without any bug. The suite has no timed assertions (docs/architecture.md, "Tests");
speed is measured by the benchmarks. A test may still set its own ``@settings``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("tikv-suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tikv-suite")
