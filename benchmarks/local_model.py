"""The embedded default on these machines: `generate` on the bundled SmolLM2-135M
(llama.cpp, one thread), tasks per minute and tokens per second end to end.

    python -m benchmarks.local_model [--target 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import table, write_section

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--target", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "service", "generate", "--out", str(out),
                        "--target", str(args.target), "--seed", "1", "--quiet", "--show", "0"],
                       env=env, check=True)
        wall = time.monotonic() - start
        run = json.loads((out / "run.json").read_text())
    usage = run["usage"]
    elapsed = float(run["timings"]["elapsed_s"])
    tokens = usage["tokens"]
    rows = [[args.target, f"{wall:.0f} s", f"{elapsed:.0f} s",
             f"{args.target / elapsed * 60:.1f}", f"{tokens['completion'] / elapsed:.0f}",
             f"{tokens['total'] / elapsed:.0f}", usage["calls"]["ok"],
             run["counters"]["instructions_admitted"]]]
    text = table(["tasks", "wall (with start-up)", "pipeline time", "tasks/minute",
                  "completion tokens/s", "all tokens/s", "calls", "admitted"], rows)
    text += ("\n\nOne llama.cpp thread, 4 slots, completions API; token counts are the"
             " server's `usage`, which counts only the first prompt of a batched request, so"
             " the token rates are lower bounds.")
    print(text)
    if not args.no_write:
        write_section("local_model", "## Embedded local model (`python -m benchmarks.local_model`)"
                      "\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
