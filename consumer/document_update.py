"""Reproducing, in memory, what mongod does to a document for each update format a source can log.

Formats:
- `$v: 2` delta diffs in mongod's dialect: sections `d` (delete), `u` (update), `i` (insert),
  `b` (binary patch), and `s<field>` sub-diffs; array sub-diffs carry `a: true`, optional `l` (new length),
  `u<index>` and `s<index>`. Semantics follow mongod's `document_diff_applier`.
- `$v: 2` diffs in the change-stream dialect some compatible servers write:
  `updatedFields` / `removedFields` / `truncatedArrays` (and `disambiguatedPaths`).
- `$v: 1` and legacy modifier updates: `$set` / `$unset`.
- Full replacements.

The caller passes the current document (a dict in BSON field order) and gets the new one back."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bson.binary import Binary

CHANGE_STREAM_DIFF_KEYS = frozenset({"updatedFields", "removedFields", "truncatedArrays", "disambiguatedPaths"})
# How a change event's update is marked in oplog form (consumer/change_events.py): its `o` is the updateDescription.
UPDATE_DESCRIPTION = "updateDescription"


class UpdateFormatError(ValueError):
    """The update cannot be applied as written: an unknown format or a path the document cannot hold."""


def is_replacement(update: Mapping[str, Any]) -> bool:
    return not any(name.startswith("$") for name in update)


def apply_update(document: Mapping[str, Any], update: Mapping[str, Any], form: str | None = None) -> dict[str, Any]:
    """The document after `update` (an oplog `o` of an `op: u` entry; with `form` "updateDescription", a change
    event's updateDescription). `document` is left untouched."""
    if form == UPDATE_DESCRIPTION:
        return apply_update_description(document, update)
    if is_replacement(update):
        replaced = dict(update)
        if "_id" in document and "_id" not in replaced:
            replaced = {"_id": document["_id"], **replaced}
        return replaced
    if "diff" in update and update.get("$v") == 2:
        diff = update["diff"]
        if CHANGE_STREAM_DIFF_KEYS.intersection(diff):  # SecantusDB logs its updates in this form
            return apply_update_description(document, diff)
        return apply_object_diff(document, diff)
    return apply_modifiers(document, update)


# ---------------------------------------------------------------------------------------------- mongod delta


def apply_object_diff(document: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    deletes = diff.get("d", {})
    updates = diff.get("u", {})
    inserts = diff.get("i", {})
    binary_patches = diff.get("b", {})
    subdiffs = {name[1:]: value for name, value in diff.items() if name.startswith("s")}
    unknown = set(diff) - {"d", "u", "i", "b"} - {"s" + name for name in subdiffs}
    if unknown:
        raise UpdateFormatError(f"unknown sections {sorted(unknown)} in a $v:2 diff")

    result: dict[str, Any] = {}
    for name, value in document.items():
        if name in deletes or name in inserts:
            continue
        if name in updates:
            result[name] = updates[name]
        elif name in subdiffs:
            result[name] = _apply_subdiff(value, subdiffs[name])
        elif name in binary_patches:
            result[name] = _apply_binary_patch(value, binary_patches[name])
        else:
            result[name] = value
    for name, value in updates.items():
        if name not in result:
            result[name] = value
    for name, value in inserts.items():
        result[name] = value
    return result


def _is_array_diff(diff: Mapping[str, Any]) -> bool:
    return diff.get("a") is True


def _apply_subdiff(value: Any, diff: Mapping[str, Any]) -> Any:
    if _is_array_diff(diff):
        return apply_array_diff(value, diff) if isinstance(value, list) else None
    return apply_object_diff(value, diff) if isinstance(value, Mapping) else None


def apply_array_diff(array: Sequence[Any], diff: Mapping[str, Any]) -> list[Any]:
    new_size = diff.get("l")
    modifications: dict[int, tuple[str, Any]] = {}
    for name, value in diff.items():
        if name in ("a", "l"):
            continue
        kind, index = name[0], name[1:]
        if kind not in ("u", "s") or not index.isdigit():
            raise UpdateFormatError(f"unknown entry {name!r} in a $v:2 array diff")
        modifications[int(index)] = (kind, value)

    result: list[Any] = []
    limit = len(array) if new_size is None else min(len(array), int(new_size))
    for index in range(limit):
        change = modifications.get(index)
        if change is None:
            result.append(array[index])
        elif change[0] == "u":
            result.append(change[1])
        else:
            result.append(_apply_subdiff(array[index], change[1]))
    end = max([limit] + [index + 1 for index in modifications if index >= limit])
    if new_size is not None:
        end = max(end, int(new_size))
    for index in range(limit, end):
        change = modifications.get(index)
        result.append(change[1] if change is not None and change[0] == "u" else None)
    return result


def _apply_binary_patch(value: Any, patch: Mapping[str, Any]) -> Any:
    """Keep bytes `[0, o)` and append `d`; an offset past the end leaves the value as it is."""
    if not isinstance(value, (bytes, Binary)):
        return None
    offset = int(patch["o"])
    if offset > len(value):
        return value
    patched = bytes(value[:offset]) + bytes(patch["d"])
    subtype = value.subtype if isinstance(value, Binary) else 0
    return Binary(patched, subtype) if subtype != 0 or isinstance(value, Binary) else patched


# ------------------------------------------------------------------------------- paths ($set / $unset style)


def _split(path: str | Sequence[Any]) -> list[Any]:
    return path.split(".") if isinstance(path, str) else list(path)


def _index_of(container: Any, component: Any) -> int | None:
    if isinstance(container, list):
        if isinstance(component, int):
            return component
        if isinstance(component, str) and component.isdigit():
            return int(component)
        raise UpdateFormatError(f"path component {component!r} cannot address an array")
    return None


def _deep_copy_path(document: dict[str, Any], components: list[Any]) -> tuple[Any, Any]:
    """Copy the containers along `components` so the caller can change the leaf without touching the input.
    Returns (parent container of the leaf, leaf component); parent is None where the path runs into a scalar."""
    container: Any = document
    for component in components[:-1]:
        index = _index_of(container, component)
        if index is not None:
            if index >= len(container):
                container.extend([None] * (index + 1 - len(container)))
            child = container[index]
            child = dict(child) if isinstance(child, Mapping) else list(child) if isinstance(child, list) else {}
            container[index] = child
        else:
            key = str(component)
            child = container.get(key)
            if isinstance(child, Mapping):
                child = dict(child)
            elif isinstance(child, list):
                child = list(child)
            elif key in container and child is not None:
                raise UpdateFormatError(f"path {'.'.join(map(str, components))!r} runs into a non-container value")
            else:
                child = {}
            container[key] = child
        container = child
    return container, components[-1]


def set_path(document: dict[str, Any], path: str | Sequence[Any], value: Any) -> None:
    """`$set` semantics: create missing objects on the way; pad arrays with null up to the index."""
    parent, leaf = _deep_copy_path(document, _split(path))
    index = _index_of(parent, leaf)
    if index is not None:
        if index >= len(parent):
            parent.extend([None] * (index + 1 - len(parent)))
        parent[index] = value
    else:
        parent[str(leaf)] = value


def unset_path(document: dict[str, Any], path: str | Sequence[Any]) -> None:
    """`$unset` semantics: remove an object field; an array element becomes null; missing paths are a no-op."""
    components = _split(path)
    probe: Any = document
    for component in components:
        if isinstance(probe, list):
            index = _index_of(probe, component)
            if index is None or index >= len(probe):
                return
            probe = probe[index]
        elif isinstance(probe, Mapping):
            if str(component) not in probe:
                return
            probe = probe[str(component)]
        else:
            return
    parent, leaf = _deep_copy_path(document, components)
    index = _index_of(parent, leaf)
    if index is not None:
        parent[index] = None
    else:
        parent.pop(str(leaf), None)


def truncate_path(document: dict[str, Any], path: str | Sequence[Any], new_size: int) -> None:
    components = _split(path)
    parent, leaf = _deep_copy_path(document, components)
    index = _index_of(parent, leaf)
    current = parent[index] if index is not None else parent.get(str(leaf))
    if isinstance(current, list):
        truncated = current[: int(new_size)]
        if index is not None:
            parent[index] = truncated
        else:
            parent[str(leaf)] = truncated


def apply_update_description(document: Mapping[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """Change-stream style: `truncatedArrays`, then `removedFields`, then `updatedFields`.
    `disambiguatedPaths` maps a dotted key to its real components where a field name contains a dot or
    looks like an array index."""
    explicit = description.get("disambiguatedPaths") or {}
    result = dict(document)
    for truncation in description.get("truncatedArrays") or []:
        truncate_path(result, explicit.get(truncation["field"], truncation["field"]), truncation["newSize"])
    for path in description.get("removedFields") or []:
        unset_path(result, explicit.get(path, path))
    for path, value in (description.get("updatedFields") or {}).items():
        set_path(result, explicit.get(path, path), value)
    return result


def apply_modifiers(document: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`$v: 1` and legacy oplog updates: mongod only ever logs `$set` and `$unset` there."""
    result = dict(document)
    for operator, arguments in update.items():
        if operator == "$v":
            continue
        if operator == "$set":
            for path, value in arguments.items():
                set_path(result, path, value)
        elif operator == "$unset":
            for path in arguments:
                unset_path(result, path)
        else:
            raise UpdateFormatError(f"update operator {operator!r} does not occur in oplog updates")
    return result


# ------------------------------------------------------------------------------------- mongod applies it itself


def as_update_operators(update: Mapping[str, Any], form: str | None = None) -> dict[str, Any] | None:
    """`$set`/`$unset` that make mongod do exactly what a `$v: 2` diff (mongod's dialect) does, so the document need
    not be read first: for diffs that only update top-level fields in place (`u`, names in ascending order, so a
    field the destination lacks is appended where the diff would append it) and remove top-level fields (`d`).
    None for anything else: `i` (which also moves an existing field to the end), sub-diffs (a no-op on a missing
    parent, null on a scalar one, where `$set` creates or fails), array and binary diffs, names a path cannot spell
    (empty, dotted, `$`-prefixed, array-index-like) and values holding such names."""
    if form is not None or update.get("$v") != 2 or len(update) != 2:
        return None
    diff = update.get("diff")
    if not isinstance(diff, Mapping) or not diff or not set(diff) <= {"u", "d"}:
        return None
    sets, unsets = diff.get("u", {}), diff.get("d", {})
    if (not isinstance(sets, Mapping) or not isinstance(unsets, Mapping) or not all(map(_is_path_name, unsets))
            or set(sets) & set(unsets)):
        return None
    names = list(sets)
    if names != sorted(names) or not all(_is_path_name(name) and _storable_as_set(sets[name]) for name in names):
        return None
    operators: dict[str, Any] = {}
    if sets:
        operators["$set"] = dict(sets)
    if unsets:
        operators["$unset"] = {name: "" for name in unsets}
    return operators or None


def _is_path_name(name: str) -> bool:
    return bool(name) and "." not in name and not name.startswith("$") and not name.isdigit()


def _storable_as_set(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(name, str) and name != "" and "." not in name and not name.startswith("$")
                   and _storable_as_set(item) for name, item in value.items())
    if isinstance(value, list):
        return all(_storable_as_set(item) for item in value)
    return True
