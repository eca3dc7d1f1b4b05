"""`mstools batch` on a cohort: wall time, peak memory per worker, the cohort table, a rerun.

Runs ``mstools batch SOURCE -o OUT --json`` twice (the second run must skip every case
already done) and prints the wall times, each worker's peak resident memory, the
cohort's mean metrics and the cohort table.

Run: python benchmarks/bench_batch.py SOURCE OUT [--workers N] [extra batch options]
     (e.g. a folder of 20 cases from `mstools simulate sims/eval --cases 20 --seed 1000`)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path


def batch(source: str, out: str, extra: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mstools_cli.main", "batch", source, "-o", out, "--json", *extra],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(done.stderr)
    return json.loads(done.stdout), wall


def main() -> None:
    source, out, *extra = sys.argv[1:]
    first, wall_first = batch(source, out, extra)
    print(f"first run: {first['done']} done, {first['skipped']} skipped, {first['failed']} failed; "
          f"wall {wall_first:.1f} s (command), {first['wall_seconds']} s (cases)")
    for worker, peak in sorted(first["peak_rss_mb_per_worker"].items()):
        print(f"  worker {worker}: peak RSS {peak:.0f} MB")
    rows = [line.split("\t") for line in (Path(out) / "cohort.tsv").read_text().splitlines()]
    seconds = [float(r[rows[0].index("seconds")]) for r in rows[1:] if r[rows[0].index("status")] == "done"]
    if seconds:
        print(f"  time per case on a worker: mean {sum(seconds) / len(seconds):.1f} s, max {max(seconds):.1f} s")
    second, wall_second = batch(source, out, extra)
    print(f"rerun: {second['done']} done, {second['skipped']} skipped, {second['failed']} failed; "
          f"wall {wall_second:.1f} s")
    rows = [line.split("\t") for line in (Path(out) / "cohort.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    column = {name: i for i, name in enumerate(header)}
    for metric in ("lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice"):
        values = [float(r[column[metric]]) for r in rows if r[column[metric]] not in ("n/a", "", "nan")]
        values = [v for v in values if not math.isnan(v)]
        if values:
            print(f"  mean {metric}: {sum(values) / len(values):.3f} over {len(values)} cases")
    print(f"  new lesions found: {sum(int(r[column['new_lesions']]) for r in rows if r[column['new_lesions']])}")
    print("cohort table:")
    for row in [header, *rows]:
        print("  " + "  ".join(row))


if __name__ == "__main__":
    main()
