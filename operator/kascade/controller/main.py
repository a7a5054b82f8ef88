"""``kascade operator``: runs the kopf operator in this process."""

from __future__ import annotations

import argparse
import logging
import os


def main(argv: list[str] | None = None) -> int:
    """Runs the operator until interrupted."""
    parser = argparse.ArgumentParser(
        prog="kascade operator",
        description="Reconcile LocalModelPools, CloudExperts and RoutingPolicies.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    scope.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable)",
    )
    # The chart sets KASCADE_LOG_LEVEL and KASCADE_HEALTH_PORT on the operator Deployment.
    parser.add_argument(
        "--log-level",
        default=os.environ.get("KASCADE_LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    health_port = os.environ.get("KASCADE_HEALTH_PORT")
    parser.add_argument(
        "--liveness",
        default=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
        metavar="URL",
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    import kopf

    from kascade.controller import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.log_level == "DEBUG")
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0
