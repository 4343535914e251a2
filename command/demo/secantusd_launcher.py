"""Test and demo launcher for SecantusDB (GPL-2.0): it is only ever run as its own process, never imported.

Runs secantusd-py with one fix to its tailable cursors on local.oplog.rs.

As shipped, such a cursor returns what an initial scan matched and then continues from the oplog's
visible tail read *after* that scan: an entry committed in between is never returned. mongod never
does this. Here the cursor walks the oplog by its sequence number from the start, bounded by the
server's own visibility watermark (read_oplog), so nothing can fall between the first batch and the
rest. It starts at the first sequence number whose ts can match the filter's lower bound, found by bisection
(sequence numbers and timestamps are minted together, so both ascend): a walk from sequence 1 decodes the whole
oplog, which took seconds on a 150k-entry oplog where mongod seeks; for the same reason the find command's
own full scan, whose result this cursor never uses, is skipped for it. The oplog's first and last entries
(find_one sorted by $natural) are read at their sequence numbers too, not by sorting a full scan.

Two more differences from mongod are corrected here. An ordered insert refused by a validator at position k inserts
nothing as shipped; mongod inserts the k documents before it and says so (`n`). A `{_id: {$in: [...]}}` find checks
every candidate against the whole list, so its cost grows with the square of the list (2,000 ids: 2.8 s) where
mongod seeks once per value: such finds are answered here in slices of 50 ids.

This patches the test server only; the project under test runs unmodified."""
import sys
import threading

import bson
import secantus.commands as commands
from secantus.query import matches
from secantus.storage import Storage

_opening_oplog_tail = threading.local()


def _lower_ts_bound(filter_):
    condition = (filter_ or {}).get("ts")
    if not isinstance(condition, dict):
        return None
    return condition.get("$gte", condition.get("$gt"))


def _last_seq_before(storage, ts):
    """The highest sequence number whose entry's ts is below `ts` (0 if none): bisection over the visible oplog."""
    low, high = 0, storage.oplog_visible_tail_seq()
    while low < high:
        middle = (low + high + 1) // 2
        rows = storage.read_oplog(start_seq=middle, limit=1)
        if rows and rows[0][1]["ts"] < ts:
            low = rows[0][0]
        else:
            high = middle - 1
    return low


def _find_tailable_oplog(filter_, initial_docs, batch_size, ns, await_data, ctx):
    storage = ctx.storage
    lower = _lower_ts_bound(filter_)
    state = {"after_seq": _last_seq_before(storage, lower) if lower is not None else 0}

    def producer():
        out = []
        while not out:
            rows = storage.read_oplog(start_seq=state["after_seq"] + 1, limit=max(batch_size or 0, 1000))
            if not rows:
                break
            state["after_seq"] = rows[-1][0]
            out = [entry for _seq, entry in rows if not filter_ or matches(entry, filter_)]
        return out

    first = producer()
    cursor_id = ctx.cursors.register_tailable(ns, producer, await_data=await_data,
                                              initial_remaining=first[batch_size:])
    return {"cursor": {"firstBatch": first[:batch_size], "id": bson.Int64(cursor_id), "ns": ns}, "ok": 1.0}


def _find(doc, ctx):
    opening = bool(doc.get("tailable")) and doc.get("find") == "oplog.rs" and ctx.db_name == "local"
    _opening_oplog_tail.active = opening
    try:
        return _shipped_find(doc, ctx)
    finally:
        _opening_oplog_tail.active = False


def _oplog_edge(storage, filter_, kwargs):
    """The oldest or newest oplog entry for an unfiltered limit-1 $natural sort; None for any other query."""
    sort, projection = kwargs.get("sort"), kwargs.get("projection")
    if filter_ or kwargs.get("skip") or kwargs.get("limit") != 1 or not isinstance(sort, dict) or list(sort) != ["$natural"]:
        return None
    if projection and not all(value in (1, True) for value in projection.values()):
        return None
    start = 1 if sort["$natural"] > 0 else storage.oplog_visible_tail_seq()
    rows = storage.read_oplog(start_seq=start, limit=1)
    if not rows:
        return None
    entry = rows[0][1]
    return [{key: entry[key] for key in projection if key in entry} if projection else entry]


def _find_by_ids(self, db, coll, ids):
    documents = {}
    for start in range(0, len(ids), _ID_SLICE):
        for document in _shipped_find_matching(self, db, coll, {"_id": {"$in": ids[start:start + _ID_SLICE]}}):
            documents[bson.encode({"_id": document["_id"]})] = document
    return list(documents.values())


def _find_matching(self, db, coll, filter=None, **kwargs):  # noqa: A002 (the shipped signature)
    if (db, coll) == ("local", "oplog.rs"):
        if getattr(_opening_oplog_tail, "active", False):
            return []
        edge = _oplog_edge(self, filter, kwargs)
        if edge is not None:
            return edge
    ids = _plain_id_list(filter)
    if ids is not None and len(ids) > _ID_SLICE and not any(kwargs.values()):
        return _find_by_ids(self, db, coll, ids)
    return _shipped_find_matching(self, db, coll, filter, **kwargs)


def _plain_id_list(filter_):
    if not isinstance(filter_, dict) or list(filter_) != ["_id"]:
        return None
    condition = filter_["_id"]
    if not isinstance(condition, dict) or list(condition) != ["$in"] or not isinstance(condition["$in"], list):
        return None
    return condition["$in"]


def _insert(doc, ctx):
    """mongod's ordered insert: the documents before the first refused one are inserted."""
    reply = _shipped_insert(doc, ctx)
    errors = reply.get("writeErrors") or []
    if doc.get("ordered", True) is False or not errors or reply.get("n") or errors[0]["index"] == 0:
        return reply
    before = _shipped_insert(dict(doc, documents=doc["documents"][:errors[0]["index"]]), ctx)
    if before.get("writeErrors") or before.get("ok") != 1.0:
        return before
    return dict(reply, n=before["n"])


_ID_SLICE = 50
_shipped_find, _shipped_find_matching, _shipped_insert = commands._find, Storage.find_matching, commands._insert
commands._find_tailable_oplog = _find_tailable_oplog
commands._HANDLERS["find"] = _find
commands._HANDLERS["insert"] = _insert
Storage.find_matching = _find_matching

if __name__ == "__main__":
    from secantus.cli import main
    sys.exit(main(sys.argv[1:]))
