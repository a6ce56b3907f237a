"""The HELM side: running crfm-helm (runner), run-spec confs, instance packs, closed-stage task
files, the plugins HELM loads, and the shipped confs (runspecs/)."""
