"""Run every benchmark in bench/ (``python -m bench [name ...]``); each writes bench/results/<name>.md."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all when none are named); return the number that failed."""
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in argv] or names
    failed = 0
    for name in wanted:
        if name not in names:
            print(f"error: no benchmark {name!r}; have: {', '.join(names)}", file=sys.stderr)
            return 2
        print(f"=== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            print(f"{name} failed: {exc}", file=sys.stderr)
            failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
