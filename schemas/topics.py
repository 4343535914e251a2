"""Topic names: `--topic` may be a template with `{db}` and `{coll}`, giving one topic per namespace.

Characters Kafka does not allow in topic names (anything but ASCII letters, digits, `.`, `_` and `-`) become `_`.
Example: template `cdc.{db}.{coll}` and namespace `shop.order items` give topic `cdc.shop.order_items`."""
from __future__ import annotations

import re
import string

MAX_TOPIC_LENGTH = 249
_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")
PLACEHOLDERS = frozenset({"db", "coll"})


def placeholders(template: str) -> set[str]:
    """The `{name}` fields of a template; raises ValueError for a malformed one."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def validate_template(template: str) -> None:
    unknown = placeholders(template) - PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholders {sorted(unknown)}; accepted: {{db}} and {{coll}}")
    if not template:
        raise ValueError("the topic name is empty")


def is_template(template: str) -> bool:
    return bool(placeholders(template))


def topic_for(template: str, ns: str) -> str:
    db, _, coll = ns.partition(".")
    name = _ILLEGAL.sub("_", template.format(db=db, coll=coll)) if is_template(template) else template
    if len(name) > MAX_TOPIC_LENGTH:
        raise ValueError(f"topic name for {ns!r} is longer than Kafka's {MAX_TOPIC_LENGTH} characters")
    return name


_MARK = "kafkashakeplaceholdermark"


def _pattern(template: str, db: str | None) -> re.Pattern[str]:
    """Topic names the template gives (to database `db`, or to any), as a regular expression."""
    rendered = _ILLEGAL.sub("_", template.format(db=_ILLEGAL.sub("_", db) if db is not None else _MARK, coll=_MARK))
    return re.compile(".+".join(re.escape(part) for part in rendered.split(_MARK)))


def belongs_to_database(template: str, topic: str, db: str) -> bool:
    """Whether `topic` is one the template gives to some collection of database `db`."""
    return _pattern(template, db).fullmatch(topic) is not None


def matches_template(template: str, topic: str) -> bool:
    """Whether the template could give `topic` to some namespace."""
    return _pattern(template, None).fullmatch(topic) is not None
