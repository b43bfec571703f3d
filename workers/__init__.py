"""Stream consumers: partition ownership, step alignment, commit, compaction and replay.

At-least-once delivery from Redis; rows are derived deterministically from the committed state and the stream,
so redelivery, replay and takeover produce identical history. ``workers`` never imports ``ingest``.
"""
