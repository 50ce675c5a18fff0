"""Inspect the Orbax checkpoints of a sycojax training run.

    python launch/inspect_ckpt.py WORKDIR_OR_CKPT_DIR              # steps, tree, metadata, config
    python launch/inspect_ckpt.py DIR --step=200                   # a given step (default: latest)
    python launch/inspect_ckpt.py DIR --diff=100,200               # max |change| per leaf between two steps
    python launch/inspect_ckpt.py DIR --export=out/adapter.safetensors [--step=N]   # or .npz

DIR is a run's workdir (holding ckpt/) or its ckpt/ directory. On anything else it exits with
status 1 and says which layout it expected. The plain form also reads every array of the step back
and exits with status 1 naming the file when one is truncated or damaged.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from sycojax.train import inspection

_STEP = flags.DEFINE_integer("step", None, "step to show / export (default: the latest)")
_DIFF = flags.DEFINE_string("diff", None, "STEP_A,STEP_B: max abs change per leaf between two steps")
_EXPORT = flags.DEFINE_string("export", None, "write the step's trainable tree to this .safetensors or .npz path")
_ITEM = flags.DEFINE_enum("item", "trainable", ["trainable", "opt_state"], "which array tree to diff / export")


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # Orbax logs every read at INFO
    if len(argv) != 2:
        raise app.UsageError("usage: inspect_ckpt.py DIR [--step=N] [--diff=A,B] [--export=PATH]")
    try:
        reader = inspection.CheckpointReader(argv[1])
    except inspection.NotACheckpointError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    broken = False
    try:
        if _DIFF.value:
            try:
                step_a, step_b = (int(s) for s in _DIFF.value.split(","))
            except ValueError:
                raise app.UsageError(f"--diff takes two steps, STEP_A,STEP_B; got {_DIFF.value!r}") from None
            changes = inspection.diff_steps(reader, step_a, step_b, _ITEM.value)
            width = max(len(k) for k in changes)
            print(f"max |{_ITEM.value}[{step_b}] - {_ITEM.value}[{step_a}]| per leaf:")
            for k, v in changes.items():
                print(f"  {k.ljust(width)}  {v:.6g}")
        elif _EXPORT.value:
            path = inspection.export(reader, _EXPORT.value, _STEP.value, _ITEM.value)
            print(f"exported {_ITEM.value} of step {reader.resolve_step(_STEP.value)} to {path}")
        else:
            step = reader.resolve_step(_STEP.value)
            # A failed Orbax read leaves callbacks on its closed asyncio loop that print "Event loop is
            # closed" tracebacks from other threads; verify() reports the failure itself, so mute them.
            sys.unraisablehook = lambda _: None
            problems = inspection.verify(reader, step)  # metadata reads fail too when a data file is cut short
            if problems:
                print(f"checkpoint directory: {reader.directory}\nsteps: {reader.steps}\nstep shown: {step}\n")
                for p in problems:
                    print(f"integrity: BROKEN: {p}")
                sys.stderr.write(f"error: {problems[0]}; an earlier step may still be good (--step=N), and "
                                 "--resume moves a broken latest step aside and continues from the one before\n")
                broken = True
            else:
                print(inspection.describe(reader, step))
                print(f"\nintegrity: ok (every array of step {step} read back, shapes as recorded)")
    finally:
        reader.close()
    if broken:
        # Skip the interpreter teardown, where the same leftover callbacks print again.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    app.run(main)
