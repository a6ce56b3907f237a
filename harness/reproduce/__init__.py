"""`harness reproduce`: re-run an entry's training under the time limit (training), rebuild and
re-score it, and compare with the original (flow); the options, results and reports (options)."""
