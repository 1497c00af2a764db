"""Ministry simulators: real servers the project ships, standing in for Dukcapil, Dapodik,
DTKS, an SMS gateway and an SMTP server."""
