"""The gateway's real metrics registry, driven by hand (tests/autoscale_support.py)."""

from __future__ import annotations

import pytest
from tests.autoscale_support import GatewayMetrics


@pytest.fixture
def gateway_metrics() -> type[GatewayMetrics]:
    """The class, so a test can make several replicas (and 'restart' one)."""
    return GatewayMetrics
