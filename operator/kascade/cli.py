"""The ``kascade`` command line: one entry point for every Kascade process.

Subcommands import their implementation lazily, so ``kascade gateway`` never pays for
(or requires) Ray or kopf, and ``kascade --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module, function, one-line help). Each target is ``main(argv) -> int``.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "up": (
        "kascade.local.up",
        "main",
        "Run pools, experts and policies from YAML on this machine (embedded mode).",
    ),
    "validate": (
        "kascade.local.validate",
        "main",
        "Validate Kascade YAML files; errors name the file, object and field.",
    ),
    "render": (
        "kascade.local.render",
        "main",
        "Print the Kubernetes objects the operator would create for the YAML (GitOps review).",
    ),
    "gateway": (
        "kascade.gateway.endpoints.server",
        "main",
        "Run the routing gateway from a compiled gateway config file.",
    ),
    "sim-expert": (
        "kascade.simexpert",
        "main",
        "Run a simulated cloud LLM expert (OpenAI / Anthropic APIs) for tests and demos.",
    ),
    "operator": (
        "kascade.controller.main",
        "main",
        "Run the Kubernetes operator (reconciles pools, experts and policies).",
    ),
}

USAGE = """usage: kascade <command> [options]

Hybrid LLM inference: local small models first, cloud experts under exact budgets.

commands:
{commands}

Run 'kascade <command> --help' for the options of a command.
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches ``kascade <command> ...`` to the command's ``main(argv)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        from kascade import __version__

        print(f"kascade {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"kascade: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func(rest)


if __name__ == "__main__":
    raise SystemExit(main())
