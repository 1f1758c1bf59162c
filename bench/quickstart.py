"""How long a newcomer's first ``gradfix quickstart`` takes: on an idle machine and beside a busy process, with the
small-model thread setting (one torch thread, :mod:`gradfix_hf.runtime.threads`) and with torch's default threads
(``GRADFIX_NUM_THREADS`` = the core count), each from an empty workdir (the build included).

Another kind of CPU is stood in for by torch's other kernels (``ATEN_CPU_CAPABILITY=default`` and ``avx2``): how
far the printed figures move there is recorded too. The busy process is another torch job: a 1024×1024 matmul
loop on torch's default threads, started before the quickstart and stopped after it, the load a shared machine or
a second notebook puts on the cores. Every configuration runs ``--repeats`` times, interleaved; the fastest time
is kept (noise only ever adds time). The figures the runs print are recorded too: with one thread they are the
same on every run.

    python bench/quickstart.py --json bench/results/quickstart-cpu.json
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import processor, source_fingerprint, write_json  # bench/ is on sys.path

LOAD = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def run_quickstart(threads: str, busy: bool, capability: str = "") -> tuple[float, list[str]]:
    """Wall time of one ``gradfix quickstart`` from an empty workdir, and the result lines it prints;
    ``capability`` picks torch's CPU kernels (``ATEN_CPU_CAPABILITY``: default, avx2, avx512)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    env.pop("OMP_NUM_THREADS", None)
    if threads == "default":
        env["GRADFIX_NUM_THREADS"] = str(os.cpu_count() or 1)
    else:
        env.pop("GRADFIX_NUM_THREADS", None)
    load = subprocess.Popen([sys.executable, "-c", LOAD]) if busy else None
    try:
        if load is not None:
            time.sleep(2.0)  # the load is running before the quickstart starts
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "gradfix_hf", "quickstart", "--workdir",
                                   str(Path(work) / "qs"), "--no-progress"], env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
    finally:
        if load is not None:
            load.kill()
            load.wait()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return seconds, [line for line in done.stdout.splitlines() if "α=" in line or "zero-shot" in line
                     or "few-shot" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configs = [("one", False), ("one", True), ("default", False), ("default", True)]
    times: dict[str, list[float]] = {}
    printed: dict[str, list[list[str]]] = {}
    for _ in range(args.repeats):
        for threads, busy in configs:
            key = f"{threads}_thread{'s' if threads == 'default' else ''}_{'busy' if busy else 'idle'}"
            seconds, lines = run_quickstart(threads, busy)
            times.setdefault(key, []).append(seconds)
            printed.setdefault(key, []).append(lines)
            print(f"{key:<28} {seconds:6.1f} s")
    best = {key: min(values) for key, values in times.items()}
    kinds = {capability: run_quickstart("one", False, capability)[1] for capability in ("default", "avx2")}
    native = printed["one_thread_idle"][0]
    moved = max(abs(float(a.split()[-1]) - float(b.split()[-1]))
                for lines in kinds.values() for a, b in zip(native, lines))
    report = {
        "machine": {"processor": processor(), "cores": os.cpu_count(), "python": platform.python_version()},
        "source": source_fingerprint("gradfix_hf", "gradfix_hf_sha256"),
        "seconds": best, "all_seconds": times,
        "busy_over_idle_one_thread": best["one_thread_busy"] / best["one_thread_idle"],
        "default_over_one_thread_busy": best["default_threads_busy"] / best["one_thread_busy"],
        "same_figures_every_one_thread_run": len({tuple(x) for k in ("one_thread_idle", "one_thread_busy")
                                                  for x in printed[k]}) == 1,
        "figures_one_thread": printed["one_thread_idle"][0],
        "figures_default_threads": printed["default_threads_idle"][0],
        "figures_other_cpu_kernels": kinds, "max_move_other_cpu_kernels": moved,
    }
    print(f"one thread: idle {best['one_thread_idle']:.1f} s, busy {best['one_thread_busy']:.1f} s; default "
          f"threads: idle {best['default_threads_idle']:.1f} s, busy {best['default_threads_busy']:.1f} s "
          f"(×{report['default_over_one_thread_busy']:.2f} of one thread when busy)")
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
