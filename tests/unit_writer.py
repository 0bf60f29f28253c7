"""Run as a subprocess: one writer of one unit of a cube, held (or killed) inside its store write.

``python tests/unit_writer.py CUBE ACTION PAUSE_KEY FLAG`` where ACTION is ``ok`` (write the
unit [0, 4) at scale 0 all ok, vectors ``1 + row``), ``failed`` (write it all failed, no
vectors) or ``mark`` (``Cube.mark_failed``). The first store write of a key starting with
PAUSE_KEY waits, inside zarr's LocalStore, until the file FLAG exists (``-`` : no pause);
``kill:PREFIX`` instead writes half of that chunk's bytes and dies with SIGKILL. Prints
``held KEY`` when it holds, ``done`` at the end. Used by tests/integration/test_unit_races.py.
"""

import asyncio
import contextlib
import os
import signal
import sys

import numpy as np
from zarr.storage import LocalStore
import zarr.storage._local as zlocal

from rsembed_dask.store.cube import FAILED, OK, Cube


def hold_at(prefix: str, flag: str) -> None:
    original = LocalStore.set

    async def held_set(self, key, value):
        if key.startswith(prefix) and not getattr(held_set, "done", False):
            held_set.done = True
            print("held", key, flush=True)
            while not os.path.exists(flag):
                await asyncio.sleep(0.02)
        await original(self, key, value)

    LocalStore.set = held_set


def die_inside(prefix: str) -> None:
    original = zlocal._atomic_write

    @contextlib.contextmanager
    def half_then_die(path, mode, exclusive=False):
        with original(path, mode, exclusive=exclusive) as f:
            if prefix in str(path).replace(os.sep, "/"):
                class Half:
                    def write(self, view):
                        data = bytes(view)
                        f.write(data[:len(data) // 2])
                        f.flush()
                        print("killed inside", path, flush=True)
                        os.kill(os.getpid(), signal.SIGKILL)
                yield Half()
            else:
                yield f

    zlocal._atomic_write = half_then_die


def main(path: str, action: str, key: str, flag: str) -> None:
    if key.startswith("kill:"):
        die_inside(key[len("kill:"):])
    elif key != "-":
        hold_at(key, flag)
    cube = Cube.open(path)
    n, d = 4, cube.embed_dim
    if action == "mark":
        cube.mark_failed(0, n, 0, "lost its worker 4 times")
    else:
        ok = action == "ok"
        emb = (1.0 + np.arange(n, dtype="float32"))[:, None] * np.ones((1, d), "float32")
        cube.write_unit(0, n, 0, embedding=emb if ok else np.full((n, d), np.nan, "float32"),
                        status=np.full(n, OK if ok else FAILED, "int8"),
                        input_res_m=np.full(n, 10.0, "float32"), valid_fraction=np.ones(n, "float32"),
                        error=[""] * n if ok else ["fetch failed"] * n)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
