"""Scrape addresses from EndpointSlices as the API returns them."""

from __future__ import annotations

from typing import Any

import pytest

from kascade.controller import autoscale


def endpoint_slice(
    *,
    addresses: list[list[str]],
    ready: list[bool | None],
    port_name: str = "http",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    endpoints = []
    for addrs, is_ready in zip(addresses, ready, strict=True):
        endpoint: dict[str, Any] = {"addresses": addrs}
        if is_ready is not None:
            endpoint["conditions"] = {"ready": is_ready, "serving": is_ready}
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kascade-gateway-abcde"},
        "addressType": address_type,
        "ports": [
            {"name": "metrics-extra", "port": 9090, "protocol": "TCP"},
            {"name": port_name, "port": 8080, "protocol": "TCP"},
        ],
        "endpoints": endpoints,
    }


def test_ready_endpoints_of_all_slices_with_the_named_port() -> None:
    slices = [
        endpoint_slice(addresses=[["10.0.0.2"], ["10.0.0.1"]], ready=[True, None]),
        endpoint_slice(addresses=[["10.0.0.3"], ["10.0.0.2"]], ready=[False, True]),
        endpoint_slice(addresses=[["fd00::5"]], ready=[True], address_type="IPv6"),
        endpoint_slice(addresses=[["10.0.0.9"]], ready=[True], port_name="grpc"),
    ]
    assert autoscale.scrape_addresses(endpoint_slices=slices) == [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "[fd00::5]:8080",
    ]
    assert autoscale.scrape_addresses(endpoint_slices=slices, port_name="grpc") == ["10.0.0.9:8080"]


def test_slices_without_endpoints_or_ports_give_nothing() -> None:
    assert (
        autoscale.scrape_addresses(
            endpoint_slices=[{"addressType": "IPv4", "endpoints": None, "ports": None}]
        )
        == []
    )


def test_a_slice_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"endpoint_slices\[0\] is str; accepted: an EndpointSlice"
    ):
        autoscale.scrape_addresses(endpoint_slices=["10.0.0.1:8080"])  # type: ignore[list-item]  (on purpose)
