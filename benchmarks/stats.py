"""Benchmark ``ws stats``: 200 recordings of 10k steps each (written to a temp dir).

Prints the wall time of ``ws stats`` in a fresh subprocess (target <= 3 s on 2 cores) and the bytes it reads
(``rchar`` of /proc/self/io around ``analyses.stats.compare``, after imports) against the recordings' total size
(target <= 5%). Run: ``python benchmarks/stats.py [--runs 200] [--steps 10000]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

COUNT_BYTES = """
import sys
from analyses.stats import compare
def rchar():
    return int(next(l for l in open('/proc/self/io') if l.startswith('rchar')).split()[1])
before = rchar()
compare([sys.argv[1]], 'variant', 'final_hm', baseline='v0')
print(rchar() - before)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    from synthetic import write_run

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        start = time.perf_counter()
        for i in range(args.runs):
            variant = f"v{i % 4}"
            write_run(
                d / f"{variant}-s{i}.h5",
                behaviour="adaptive" if i % 2 else "collapsed",
                seed=i,
                n_steps=args.steps,
                config={"variant": variant},
                final=(0.8 + 0.001 * (i % 7), 0.7),
            )
        total = sum(p.stat().st_size for p in d.glob("*.h5"))
        print(
            f"wrote {args.runs} recordings x {args.steps} steps ({total / 1e6:.1f} MB) "
            f"in {time.perf_counter() - start:.1f} s"
        )
        cmd = [
            sys.executable,
            "-m",
            "workstation",
            "stats",
            str(d),
            "--by",
            "variant",
            "--metric",
            "final_hm",
            "--baseline",
            "v0",
            "--json",
        ]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
        read = int(
            subprocess.run(
                [sys.executable, "-c", COUNT_BYTES, str(d)], check=True, capture_output=True, text=True, cwd=ROOT
            ).stdout.split()[-1]
        )
        best = min(times)
        print(
            f"ws stats wall time: best {best:.2f} s of 3 (all: {', '.join(f'{t:.2f}' for t in times)}); "
            f"target <= 3 s -> ratio {best / 3:.2f}"
        )
        print(
            f"bytes read by compare(): {read / 1e6:.2f} MB of {total / 1e6:.1f} MB = {100 * read / total:.2f}% "
            f"(target <= 5%)"
        )


if __name__ == "__main__":
    main()
