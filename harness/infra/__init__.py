"""Infrastructure the harness stands on: the Docker engine (the one module that talks to it),
GPUs, the results folder's lock, SQLite files."""
