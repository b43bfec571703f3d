"""Fuzz the worker's decode path: ``decode_frame`` → ``PartitionProcessor.process`` (``RunAligner.apply``) → the
in-memory half of a commit, with seeded mutants of valid frames (see ``tests/frame_fuzz.py``).

    python bench/fuzz.py --frames 100000 --seed 1

Prints one summary line and a JSON result; exits 1 on any crash (the crash reports name the seed and frame).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.frame_fuzz import drive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        res = drive(args.seed, args.frames, Path(tmp))
    wall = time.monotonic() - t0
    for c in res.crashes[:5]:
        print(c, file=sys.stderr)
    print(f"{res.line()}, seed={args.seed}, wall={wall:.1f}s")
    print(json.dumps({"frames": res.frames, "decoded": res.decoded, "frames_dead_lettered": res.dead_lettered,
                      "dead_letters": res.dead_letters, "commits": res.commits, "crashes": len(res.crashes),
                      "seed": args.seed, "wall_s": round(wall, 1)}))
    return 1 if res.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
