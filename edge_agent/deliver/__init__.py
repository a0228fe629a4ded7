"""Event delivery: the SQLite outbox and the MQTT uplink."""
