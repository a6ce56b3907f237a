"""The leaderboard: built from a results store, rendered as text (Markdown, JSON, a terminal
table), HTML pages and SVG figures; one rendering for `harness report`, the service and releases."""
