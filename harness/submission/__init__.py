"""What a competitor gets: a rendered, hash-pinned submission folder (render) and the tiny random
model that dry runs and tests use (tiny_model)."""
