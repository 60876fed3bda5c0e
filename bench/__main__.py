"""Run the benchmarks: every module bench/NAME_bench.py that defines main(argv) -> int.

python -m bench              # all of them, one after the other
python -m bench backup -h    # one, with its own arguments
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

SUFFIX = "_bench"


def available() -> list[str]:
    here = str(Path(__file__).parent)
    return sorted(m.name[: -len(SUFFIX)] for m in pkgutil.iter_modules([here]) if m.name.endswith(SUFFIX))


def run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"bench.{name}{SUFFIX}")
    print(f"== {name} ==", flush=True)
    return int(module.main(argv))


def main() -> int:
    names = available()
    if len(sys.argv) > 1:
        name = sys.argv[1]
        if name not in names:
            print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        return run(name, sys.argv[2:])
    failures = [name for name in names if run(name, []) != 0]
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
