"""What a run reports: TensorBoard monitor, MFU, throughput, memory, console, weight pictures."""
