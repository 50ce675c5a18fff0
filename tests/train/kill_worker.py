"""Run by test_train_kill.py: train the toy problem, and hang inside the async save of step 4.

The hook sits where Orbax renames the finished temporary directory into place (the commit). When
the save of step 4 reaches it, the worker writes `argv[2]` (the marker) and sleeps, so the parent
can SIGKILL it with the save's files written but not committed.
"""

import os
import sys
import time

import train_toy as toy
from orbax.checkpoint._src.checkpointers import async_checkpointer

workdir, marker = sys.argv[1], sys.argv[2]
original = async_checkpointer._on_commit_callback


def hang_on_step_4(tmpdir, *args, **kwargs):
    path = str(tmpdir.get())
    if os.path.basename(path).split(".")[0] == "4":
        with open(marker, "w") as f:
            f.write(path)
        time.sleep(600)
    return original(tmpdir, *args, **kwargs)


async_checkpointer._on_commit_callback = hang_on_step_4
toy.run(workdir, 8)
