"""The durable write queue behind maintenance windows, and its FIFO replay."""
