"""Live streams inside one process: the hub of publishers, players and consumers."""
