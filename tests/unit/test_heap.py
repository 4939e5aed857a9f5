"""The trainer's malloc setting: freed activation-sized blocks leave the process's resident memory."""

import subprocess
import sys
import textwrap

import pytest

from swarmgrpo.trainer.heap import release_large_frees

# In a fresh process: free one 16 MB block (raising glibc's dynamic mmap threshold to 16 MB, as a
# training step's large temporaries do), then allocate 64 blocks of 2 MB, touch them, and free all but
# the last one. Prints how much of the 128 MB stays resident after the frees.
PROBE = textwrap.dedent(
    """
    import os, sys
    import torch
    from swarmgrpo.trainer.heap import release_large_frees
    if sys.argv[1] == "set":
        assert release_large_frees()
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    big = torch.ones(4 << 20)
    del big
    before = rss_mb()
    blocks = [torch.ones(512 << 10) for _ in range(64)]
    last = blocks[-1]
    del blocks
    print(rss_mb() - before)
    """
)


def resident_after_frees(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour")
def test_freed_blocks_of_a_megabyte_or_more_do_not_stay_resident():
    if not release_large_frees():
        pytest.skip("not glibc")
    kept_default = resident_after_frees("default")
    kept_set = resident_after_frees("set")
    assert kept_default > 100, (
        f"the probe should show glibc's default keeping the blocks ({kept_default:.0f} MB)"
    )
    assert kept_set < 10, f"{kept_set:.0f} MB of freed 2 MB blocks stayed resident with the setting"


def test_the_setting_is_idempotent():
    assert release_large_frees() == release_large_frees()
