"""File-system primitives shared by the shard builder and the trainer: atomic, durable writes."""
