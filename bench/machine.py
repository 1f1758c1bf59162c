"""What both benchmarks record about the run: the processor, the measured code, and how figures are printed/saved."""
from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_facts() -> dict:
    """The processor, core and thread counts and library versions a benchmark's figures belong to."""
    import transformers

    return {"processor": processor(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run_facts() -> dict:
    """The ``machine`` and ``code`` entries of a benchmark's JSON: where it ran and which sources it measured."""
    return {"machine": machine_facts(), "code": source_fingerprint("gradfix_hf", "gradfix_hf_sources")}


def source_fingerprint(package_dir: str, key: str) -> dict:
    """Which code was measured: git commit, whether gradfix_hf had changes, and a hash of ``package_dir``'s sources."""
    out: dict = {}
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           check=True).stdout.strip()
        out["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "gradfix_hf"], cwd=ROOT,
                                               capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    digest = hashlib.sha256()
    for path in sorted((ROOT / package_dir).rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    out[key] = digest.hexdigest()[:16]
    return out


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy / tick, (int(own[11]) + int(own[12])) / tick


class PeakMemory:
    """Peak RSS from now on (the kernel's high-water mark after a reset, else the lifetime ru_maxrss), and how
    much CPU other processes took meanwhile (they share the cores and slow the measurement down)."""

    def __init__(self, device: str):
        self.device = device
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after clear_refs reset"
        except OSError:
            self.method = "ru_maxrss (lifetime of the child process)"
        self.baseline_mb = rss_mb()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_baseline_mb = torch.cuda.memory_allocated() / 2 ** 20
        self.started = time.perf_counter()
        self.cpu = cpu_busy_seconds()

    def read(self) -> dict:
        wall = time.perf_counter() - self.started
        busy, own = (b - a for a, b in zip(self.cpu, cpu_busy_seconds()))
        peak = None
        if self.method.startswith("VmHWM"):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(self.baseline_mb, 1),
               "peak_over_baseline_mb": round(peak - self.baseline_mb, 1), "rss_method": self.method,
               # CPU time other processes used while this was measured, as a fraction of all cores' time
               "other_processes_cpu_fraction": round(max(0.0, busy - own) / (wall * (os.cpu_count() or 1)), 3)}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            out["cuda_baseline_allocated_mb"] = round(self.cuda_baseline_mb, 1)
        return out
