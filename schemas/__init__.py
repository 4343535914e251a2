"""The wire contract third parties depend on: message formats, headers, partition keys, and the codec.

See docs/formats.md for the byte-level description."""

# 2: keys normalise numeric _ids, raw records split ts into seconds and increment, fragments, watermarks and
# faithful json (docs/formats.md, "Versioning").
WIRE_VERSION = 2
