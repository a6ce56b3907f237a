"""The HELM side: running crfm-helm (runner) and reading what it wrote (results), run-spec confs,
instance packs, closed-stage task files, the plugins HELM loads, the shipped confs (runspecs/)."""
