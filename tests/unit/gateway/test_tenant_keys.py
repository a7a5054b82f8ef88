"""Tenant keys: read from Secret-like directories, held as digests, refused when shared,
and the Redis URL assembled from Secret files."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests import tenant_support

from kascade.gateway import config as config_mod
from kascade.gateway import redis_source
from kascade.gateway.tenants import access
from kascade.gateway.tenants import keys as keys_mod


def _tenants(**dirs: Path) -> dict[str, config_mod.TenantConfig]:
    return {
        name: config_mod.TenantConfig.model_validate(tenant_support.tenant(d))
        for name, d in dirs.items()
    }


def test_ring_holds_digests_only_and_skips_kubelet_links(tmp_path: Path) -> None:
    tenant_support.write_secret_dir(tmp_path / "a", {"ci": "key-one\n", "dev": "key-two"})
    ring = keys_mod.build_ring(tenants=_tenants(a=tmp_path / "a"), auth=None)
    assert ring.lookup("key-one") == "a"
    assert ring.lookup("key-two") == "a"
    assert ring.lookup("key-thre") is None
    assert ring.counts() == {"a": 2}  # `..data` and `..vN` are not keys
    assert b"key-one" not in repr(ring).encode()


def test_a_key_in_two_tenants_is_refused_for_both(tmp_path: Path) -> None:
    tenant_support.write_secret_dir(tmp_path / "a", {"k": "shared", "own": "a-only"})
    tenant_support.write_secret_dir(tmp_path / "b", {"k": "shared"})
    ring = keys_mod.build_ring(tenants=_tenants(a=tmp_path / "a", b=tmp_path / "b"), auth=None)
    assert ring.lookup("shared") is None
    assert ring.lookup("a-only") == "a"


def test_admit_orders_401_then_403() -> None:
    tenant = access.build_tenants(
        config_mod.GatewayConfig.model_validate(
            {
                "pools": {"p": {"endpoint": "http://x", "model": "m"}},
                "policies": {"chat": {"localPool": "p"}, "open": {"localPool": "p"}},
                "tenants": {"t": {"keys": {"env": "X"}, "policies": ["open"]}},
            }
        )
    )["t"]
    caller = access.Caller(tenant=tenant, authenticated=True)
    access.admit(caller=caller, policy="open", required=True, allow_anonymous=False)
    with pytest.raises(Exception, match="may not call model `chat`") as err:
        access.admit(caller=caller, policy="chat", required=True, allow_anonymous=False)
    assert getattr(err.value, "status", None) == 403
    with pytest.raises(Exception, match="Missing API key") as err:
        access.admit(caller=access.ANONYMOUS_CALLER, policy="open", required=True,
                     allow_anonymous=False)  # fmt: skip
    assert getattr(err.value, "status", None) == 401
    access.admit(caller=access.ANONYMOUS_CALLER, policy="x", required=True, allow_anonymous=True)


def test_tenant_policies_must_exist() -> None:
    with pytest.raises(config_mod.ConfigError, match=r"tenants.t.policies: unknown policy 'x'"):
        config_mod.parse_config({"tenants": {"t": {"keys": {"env": "X"}, "policies": ["x"]}}})


def test_redis_url_from_secret_files(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://redis.kascade:6379/0\n")
    (tmp_path / "pw").write_text("p@ss/word")
    cfg = config_mod.LedgerConfig(
        url_file=str(tmp_path / "url"), password_file=str(tmp_path / "pw")
    )
    assert redis_source.ledger_url(cfg) == "redis://:p%40ss%2Fword@redis.kascade:6379/0"
    assert redis_source.key_prefix("team-a") == "kascade:team-a:"
    missing = config_mod.LedgerConfig(url_file=str(tmp_path / "nope"))
    with pytest.raises(config_mod.ConfigError, match=r"ledger\.urlFile: cannot read"):
        redis_source.ledger_url(missing)


def test_the_key_watcher_swaps_in_rotated_keys_and_only_then(tmp_path: Path) -> None:
    tenant_support.write_secret_dir(tmp_path / "a", {"ci": "key-one"})
    config = config_mod.GatewayConfig.model_validate(
        {
            "pools": {"p": {"endpoint": "http://x", "model": "m"}},
            "policies": {"chat": {"localPool": "p"}},
            "tenants": {"a": tenant_support.tenant(tmp_path / "a")},
        }
    )
    live = [keys_mod.build_ring(tenants=config.tenants, auth=config.auth)]
    watcher = keys_mod.KeyWatcher(current=lambda: (config, live[-1]), swap=live.append)
    assert watcher.check() is False
    assert len(live) == 1
    # Rotation as the kubelet writes it: key-two added, key-one deleted.
    tenant_support.write_secret_dir(tmp_path / "a", {"ci-2": "key-two"})
    assert watcher.check() is True
    assert live[-1].lookup("key-one") is None
    assert live[-1].lookup("key-two") == "a"
    assert watcher.check() is False
    assert len(live) == 2
    # Rotation and revocation take effect within 10 s (issue 13) because one check runs
    # every POLL_SECONDS; the end-to-end bound is polled in the gateway and e2e tests.
    assert keys_mod.POLL_SECONDS <= 2
