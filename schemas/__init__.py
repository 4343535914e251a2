"""The wire contract third parties depend on: message formats, headers, partition keys, and the codec.

See docs/formats.md for the byte-level description."""

WIRE_VERSION = 1
