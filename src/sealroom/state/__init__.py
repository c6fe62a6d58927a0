"""In-memory shared state: rooms and fan-out, outboxes, message ids and history queues."""
