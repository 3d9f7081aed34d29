"""memlm: memory-augmented language models trained segment by segment."""
