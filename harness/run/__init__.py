"""`harness run`: the options (RunOptions), the driver over a folder of entries, the per-entry
pipeline (build, serve, health, gateway, HELM, failure classification), the executors (local,
Ray), coarse-to-fine tiers and the GPU-hour plan."""
