"""The worker runtime: consumers that take work from RabbitMQ and acknowledge it only once its
effect is committed in PostgreSQL (at-least-once delivery, idempotent handlers)."""
