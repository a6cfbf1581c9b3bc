"""Run benchmarks of this checkout and of a base commit interleaved, and print their ratios.

    .venv/bin/python bench/compare.py [--base 8d6eb39] [--rounds 3] [--quick]

The base commit's tree is unpacked from git into a temporary directory; each
round runs every benchmark script once from the base tree and once from this
one (base first in odd rounds, new first in even ones), each with its own
tree's code on PYTHONPATH. A benchmark's printed lines are matched by their
text with the numbers taken out, and every number is compared by its median
over the rounds: ``base -> new (new/base)``. Which direction is better depends
on the figure (a rate or a time); the line says which it is.

``--this-scripts`` runs this checkout's copy of each script in the base tree
too (still on the base tree's code): for a script fixed since the base
commit, so that both sides are measured the same way.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"\d[\d,]*\.?\d*")
BENCHES = {  # script: (arguments with --quick, without)
    "bench_intake.py": (["--quick"], []),
    "bench_placement.py": (["--quick"], []),
    "bench_cluster.py": (["--tasks", "100"], ["--tasks", "200"]),
}


def unpack(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` (code and benchmarks) under ``dest``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "oaasd", "bench", "tests"],
                             capture_output=True, check=True)
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(dest, filter="data")
    return dest


def run(tree: Path, script: str, args: list[str]) -> list[str]:
    """One run of a benchmark script of ``tree`` with that tree's code; its printed lines."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(tree / "bench" / script), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{script} in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return [line for line in done.stdout.splitlines() if NUMBER.search(line)]


def numbers(line: str) -> list[float]:
    return [float(n.replace(",", "")) for n in NUMBER.findall(line)]


def _shape(line: str) -> str:
    """A printed line with its numbers taken out and its spacing folded: what identifies a figure."""
    return " ".join(NUMBER.sub("#", line).split())


def compare(base_runs: list[list[str]], new_runs: list[list[str]]) -> list[str]:
    """One line per printed figure: its text, then base median -> new median (ratio) per number."""
    out = []
    for i, line in enumerate(new_runs[0]):
        shape = _shape(line)
        b = [numbers(r[i]) for r in base_runs if i < len(r) and _shape(r[i]) == shape]
        n = [numbers(r[i]) for r in new_runs if i < len(r) and _shape(r[i]) == shape]
        if not b:
            out.append(f"  (new only) {line.strip()[:160]}")
            continue
        cells = []
        for k in range(min(len(n[0]), 6)):
            mb, mn = statistics.median(x[k] for x in b), statistics.median(x[k] for x in n)
            if mb != mn or k == 0:
                cells.append(f"{mb:g} -> {mn:g} ({mn / mb:.2f})" if mb else f"{mb:g} -> {mn:g}")
        out.append(f"  {shape[:110]}\n      " + "; ".join(cells))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="8d6eb39", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the benchmarks' small sizes")
    parser.add_argument("--only", nargs="*", default=list(BENCHES), help="benchmark scripts to run")
    parser.add_argument("--args", help="arguments for every script instead of its usual ones, as one string: "
                        "--args='--quick --throughput-only'")
    parser.add_argument("--this-scripts", action="store_true",
                        help="run this checkout's benchmark scripts in the base tree too")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; base {args.base} vs this checkout; {args.rounds} rounds; "
          f"{time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        base = unpack(args.base, Path(tmp))
        if args.this_scripts:
            for script in args.only:
                (base / "bench" / script).write_bytes((REPO / "bench" / script).read_bytes())
        for script in args.only:
            extra = args.args.split() if args.args is not None else BENCHES[script][0 if args.quick else 1]
            runs: dict[str, list[list[str]]] = {"base": [], "new": []}
            for r in range(args.rounds):
                order = [("base", base), ("new", REPO)] if r % 2 == 0 else [("new", REPO), ("base", base)]
                for name, tree in order:
                    runs[name].append(run(tree, script, extra))
            print(f"{script} {' '.join(extra)}: base -> new (new/base), medians of {args.rounds}")
            print("\n".join(compare(runs["base"], runs["new"])), flush=True)


if __name__ == "__main__":
    main()
