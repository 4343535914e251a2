"""The consumer: replays messages from Kafka into a destination MongoDB.

Flow: Kafka messages → `decoder` (events) → `applier` (bulk writes, conflicts) → `checkpoint` → offset commit."""
