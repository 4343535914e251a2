"""What an oplog entry is: its positions, its routing fields, and how transactions unwind into operations.

Shared by the producer (which reads entries) and the consumer (which may receive whole `applyOps` entries)."""
