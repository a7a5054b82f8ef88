"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go does it.

Several operator replicas may run; only the one that holds the Lease acts. The others
wait as standbys and take the Lease when its holder stops renewing it (or releases it
on a clean shutdown). The whole operator is elected, kopf and the operator's own loops
(the resync loop, the per-pool autoscalers) alike: a standby has not started kopf, so it
watches, writes and decides nothing.

The decision is a pure function of the Lease as read, what this process observed of it
and when (on its own monotonic clock), and its identity: :func:`observe`,
:func:`decide` and :func:`lease_for`. Expiry is measured from when *this* process first
saw the current record, never from the ``renewTime`` written in it, so clocks of
different machines never have to agree (client-go's ``observedTime``).

Safety: a leader that has not renewed for ``renew_deadline`` (10 s, measured from when it
sent its last successful renewal) stops at once; a standby takes an unreleased Lease only
``lease_duration`` (15 s) after it observed the last renewal. Every write carries the
``resourceVersion`` it was decided from, so of two standbys taking an expired Lease one
gets 409 Conflict and stays a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kascade.controller.kube import Kube, KubeError

log = logging.getLogger("kascade.leader")

Manifest = dict[str, Any]

LEASE_NAME = "kascade-operator"


@dataclass(frozen=True)
class Timing:
    """client-go's defaults: lease 15 s, renew deadline 10 s, retry 2 s; renew every 5 s."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    renew_period: float = 5.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period <= self.renew_period < self.renew_deadline:
            raise ValueError("need retry_period <= renew_period < renew_deadline")
        if not self.renew_deadline < self.lease_duration:
            raise ValueError("need renew_deadline < lease_duration")


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # released, or expired while someone else held it
    RENEW = "renew"  # this process holds it
    WAIT = "wait"  # someone else holds it and it has not expired


@dataclass(frozen=True)
class Observation:
    """The Lease record last seen and when (monotonic seconds) it was first seen."""

    record: tuple[Any, ...]
    at: float


@dataclass(frozen=True)
class Decision:
    action: Action
    # For WAIT: seconds until the observed holder's lease expires.
    expires_in: float = 0.0


def holder_of(lease: Manifest | None) -> str:
    """The Lease's holder identity; "" when it is released or absent."""
    if lease is None:
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _record(lease: Manifest | None) -> tuple[Any, ...]:
    if lease is None:
        return ()
    spec = lease.get("spec") or {}
    return (
        spec.get("holderIdentity") or "",
        spec.get("renewTime"),
        spec.get("acquireTime"),
        spec.get("leaseDurationSeconds"),
        spec.get("leaseTransitions"),
    )


def observe(previous: Observation | None, lease: Manifest | None, now: float) -> Observation:
    """The observation after reading ``lease`` at ``now``: the old one while the record
    is unchanged (its clock keeps running), a new one from ``now`` when it changed."""
    record = _record(lease)
    if previous is not None and previous.record == record:
        return previous
    return Observation(record=record, at=now)


def decide(
    lease: Manifest | None,
    observation: Observation,
    now: float,
    identity: str,
    *,
    default_duration: float = Timing.lease_duration,
) -> Decision:
    """What to do with the Lease as read (``observation`` must come from :func:`observe`
    of the same read)."""
    if lease is None:
        return Decision(Action.CREATE)
    holder = holder_of(lease)
    if holder == identity:
        return Decision(Action.RENEW)
    if not holder:
        return Decision(Action.TAKE)
    duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or default_duration
    expires_at = observation.at + float(duration)
    if now >= expires_at:
        return Decision(Action.TAKE)
    return Decision(Action.WAIT, expires_in=expires_at - now)


def micro_time(at: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_for(
    current: Manifest | None,
    action: Action,
    *,
    identity: str,
    name: str,
    namespace: str,
    wall: datetime,
    duration: float,
) -> Manifest:
    """The Lease to write for ``action`` (CREATE, TAKE or RENEW), carrying the read's
    ``resourceVersion`` so the write fails with 409 if anyone wrote in between."""
    stamp = micro_time(wall)
    spec_now = dict((current or {}).get("spec") or {})
    transitions = int(spec_now.get("leaseTransitions") or 0)
    if action is Action.RENEW:
        acquire = spec_now.get("acquireTime") or stamp
    elif action in (Action.CREATE, Action.TAKE):
        acquire = stamp
        if action is Action.TAKE and holder_of(current) != identity:
            transitions += 1
    else:
        raise ValueError(f"nothing to write for {action}")
    metadata: Manifest = {"name": name, "namespace": namespace}
    if current is not None:
        metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": max(1, round(duration)),
            "acquireTime": acquire,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


def released(current: Manifest, *, wall: datetime) -> Manifest:
    """The Lease with its holder cleared (a clean shutdown): a standby takes it at once."""
    spec = dict(current.get("spec") or {})
    spec.pop("holderIdentity", None)
    spec["leaseDurationSeconds"] = 1
    spec["renewTime"] = micro_time(wall)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": current["metadata"]["name"],
            "namespace": current["metadata"]["namespace"],
            "resourceVersion": current["metadata"]["resourceVersion"],
        },
        "spec": spec,
    }


def default_identity() -> str:
    """The pod's name (its hostname in Kubernetes) and a random suffix, so a restarted
    container never mistakes its predecessor's Lease for its own."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host}_{uuid.uuid4().hex[:8]}"


class LostLeadership(Exception):
    """The Lease was taken by someone else, or could not be renewed in time."""


class LeaderElector:
    """Acquires, holds and releases the Lease over the operator's Kube client."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str = LEASE_NAME,
        identity: str | None = None,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timing = timing or Timing()
        self._clock = clock
        self._wall = wall
        self._held: Manifest | None = None  # the Lease as last written by this process
        self._renewed_at = 0.0  # when the last successful write was sent (monotonic)

    @property
    def leading(self) -> bool:
        return self._held is not None

    async def _read(self) -> Manifest | None:
        return await asyncio.wait_for(
            self.kube.get("Lease", namespace=self.namespace, name=self.name),
            timeout=self.timing.retry_period * 2,
        )

    async def _write(self, lease: Manifest, *, create: bool, within: float) -> Manifest:
        call = self.kube.create(lease) if create else self.kube.replace(lease)
        return await asyncio.wait_for(call, timeout=within)

    async def try_acquire_once(self, observation: Observation | None) -> Observation | None:
        """One standby round: read, decide, maybe write. Returns the new observation
        (None once the Lease is held)."""
        lease = await self._read()
        now = self._clock()
        observation = observe(observation, lease, now)
        decision = decide(lease, observation, now, self.identity)
        if decision.action is Action.WAIT:
            log.debug(
                "Lease %s/%s held by %s; standing by (expires in %.1fs unless renewed)",
                self.namespace,
                self.name,
                holder_of(lease),
                decision.expires_in,
            )
            return observation
        desired = lease_for(
            lease,
            decision.action,
            identity=self.identity,
            name=self.name,
            namespace=self.namespace,
            wall=self._wall(),
            duration=self.timing.lease_duration,
        )
        sent = self._clock()
        try:
            written = await self._write(
                desired, create=decision.action is Action.CREATE, within=self.timing.renew_deadline
            )
        except KubeError as exc:
            if exc.status == 409:  # someone else wrote first: they won
                log.info("Lease %s/%s: another candidate won the race", self.namespace, self.name)
                return observation
            raise
        self._held = written
        self._renewed_at = sent
        log.info(
            "Acquired Lease %s/%s as %s (%s, previous holder %r)",
            self.namespace,
            self.name,
            self.identity,
            decision.action.value,
            holder_of(lease),
        )
        return None

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Waits as a standby until the Lease is held (True) or ``stop`` is set (False)."""
        observation: Observation | None = None
        announced = ""
        while True:
            try:
                observation = await self.try_acquire_once(observation)
            except (KubeError, TimeoutError, OSError) as exc:
                log.warning("Lease %s/%s: %s; retrying", self.namespace, self.name, exc)
            else:
                if observation is None:
                    return True
                holder = str(observation.record[0]) if observation.record else ""
                if holder and holder != announced:
                    log.info(
                        "Standing by: Lease %s/%s is held by %s",
                        self.namespace,
                        self.name,
                        holder,
                    )
                    announced = holder
            if stop is None:
                await asyncio.sleep(self.timing.retry_period)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.timing.retry_period)
            if stop.is_set():
                return False

    async def renew_once(self) -> None:
        """Renews the held Lease; LostLeadership if someone else holds it now."""
        if self._held is None:
            raise LostLeadership("the Lease is not held")
        remaining = self.timing.renew_deadline - (self._clock() - self._renewed_at)
        if remaining <= 0:
            raise LostLeadership("renew deadline passed")
        sent = self._clock()
        desired = lease_for(
            self._held,
            Action.RENEW,
            identity=self.identity,
            name=self.name,
            namespace=self.namespace,
            wall=self._wall(),
            duration=self.timing.lease_duration,
        )
        try:
            self._held = await self._write(desired, create=False, within=remaining)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            # A write that timed out here may have reached the server: the Lease is
            # still ours if it names us. Otherwise someone else took it.
            current = await self._read()
            if holder_of(current) != self.identity or current is None:
                raise LostLeadership(f"the Lease is now held by {holder_of(current)!r}") from None
            self._held = current
            return await self.renew_once()
        self._renewed_at = sent

    async def hold(self, on_lost: Callable[[str], None]) -> None:
        """Renews every ``renew_period`` (retrying every ``retry_period``) until
        cancelled; calls ``on_lost`` as soon as leadership is lost or cannot be
        confirmed within ``renew_deadline``."""
        while True:
            await asyncio.sleep(self.timing.renew_period)
            while True:
                try:
                    await self.renew_once()
                    break
                except LostLeadership as exc:
                    self._held = None
                    on_lost(str(exc))
                    return
                except (KubeError, TimeoutError, OSError) as exc:
                    left = self.timing.renew_deadline - (self._clock() - self._renewed_at)
                    log.warning("Renewing Lease failed (%s); %.1fs left", exc, left)
                    if left <= 0:
                        self._held = None
                        on_lost(f"could not renew within {self.timing.renew_deadline:.0f}s")
                        return
                    await asyncio.sleep(min(self.timing.retry_period, left))

    async def release(self) -> None:
        """Clears the holder (a clean shutdown) so a standby takes over at once."""
        held, self._held = self._held, None
        if held is None:
            return
        try:
            await self._write(
                released(held, wall=self._wall()), create=False, within=self.timing.retry_period
            )
        except (KubeError, TimeoutError, OSError) as exc:
            log.warning("Could not release Lease %s/%s: %s", self.namespace, self.name, exc)
        else:
            log.info("Released Lease %s/%s", self.namespace, self.name)
