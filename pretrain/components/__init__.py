"""What a run is assembled from: engine, checkpoints, data position, state, EMA, schedule, export."""
