"""The producer: reads a MongoDB source's oplog and publishes every change to Kafka.

Flow: `oplog_reader` (raw entries) → `operations` (filtering, transaction unwinding) →
`publisher` (encoding and Kafka) → `delivery` (acknowledgement bookkeeping) → `checkpoint`."""
