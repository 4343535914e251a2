"""Test and demo launcher for SecantusDB (GPL-2.0): it is only ever run as its own process, never imported.

Runs secantusd-py with one fix to its tailable cursors on local.oplog.rs.

As shipped, such a cursor returns what an initial scan matched and then continues from the oplog's
visible tail read *after* that scan: an entry committed in between is never returned. mongod never
does this. Here the cursor walks the oplog by its sequence number from the start, bounded by the
server's own visibility watermark (read_oplog), so nothing can fall between the first batch and the
rest. This patches the test server only; the project under test runs unmodified."""
import sys

import bson
import secantus.commands as commands
from secantus.query import matches


def _find_tailable_oplog(filter_, initial_docs, batch_size, ns, await_data, ctx):
    storage = ctx.storage
    state = {"after_seq": 0}

    def producer():
        out = []
        while not out:
            rows = storage.read_oplog(start_seq=state["after_seq"] + 1, limit=1000)
            if not rows:
                break
            state["after_seq"] = rows[-1][0]
            out = [entry for _seq, entry in rows if not filter_ or matches(entry, filter_)]
        return out

    first = producer()
    cursor_id = ctx.cursors.register_tailable(ns, producer, await_data=await_data,
                                              initial_remaining=first[batch_size:])
    return {"cursor": {"firstBatch": first[:batch_size], "id": bson.Int64(cursor_id), "ns": ns}, "ok": 1.0}


commands._find_tailable_oplog = _find_tailable_oplog

if __name__ == "__main__":
    from secantus.cli import main
    sys.exit(main(sys.argv[1:]))
