"""Process plumbing both the producer and the consumer run on: logging with secret redaction, retries
with backoff, graceful shutdown, and the metrics endpoint."""
