"""The competitor's loop on one machine: `harness eval` (local.py) scores a model folder with
HELM without building an image, `harness sweep` (sweep.py) trains, merges and scores variants of
a training config and compares them."""
