"""``python -m train METHOD [options]``: one entry point for every job of this project.

A method is a module train/<module>.py providing

    HELP                          one line for the method list
    add_arguments(parser)         its argparse options
    main(args) -> int             run it from the parsed options; the exit status

and an entry in METHODS below. Modules are imported only when their method is run, so a broken
or heavy one does not stop the others (or `python -m train --help`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# method name -> module under train/. Add trainers here.
METHODS: dict[str, str] = {
    "demo": "demo",
    "pcd": "pcd",
    "cd": "cd",
    "jarzynski": "jarzynski",
    "coopvae": "coopvae",
    "dualmcmc": "dualmcmc",
    "compare": "compare",
}


def _method_help(name: str) -> str:
    try:
        return getattr(importlib.import_module(f"{__package__}.{METHODS[name]}"), "HELP", "")
    except Exception as e:  # list it anyway, saying why it cannot be described
        return f"(failed to import: {type(e).__name__}: {e})"


def _usage() -> str:
    width = max(len(m) for m in METHODS)
    lines = [
        "usage: python -m train METHOD [options]     (python -m train METHOD --help for its options)",
        "",
        "methods:",
    ]
    lines += [f"  {m:<{width}}  {_method_help(m)}" for m in METHODS]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    method, rest = argv[0], argv[1:]
    if method not in METHODS:
        print(
            f"python -m train: unknown method {method!r}; available methods: {', '.join(sorted(METHODS))}\n",
            file=sys.stderr,
        )
        print(_usage(), file=sys.stderr)
        return 2
    mod = importlib.import_module(f"{__package__}.{METHODS[method]}")
    parser = argparse.ArgumentParser(
        prog=f"python -m train {method}", description=getattr(mod, "HELP", None)
    )
    mod.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(mod.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
