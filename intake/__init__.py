"""The intake edge: validates registrations, hands them to RabbitMQ, answers 202 once the broker
has confirmed them durable, and sheds load with 503 when it cannot."""
