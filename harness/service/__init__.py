"""`harness serve`: the evaluation service competitors queue their entries on (API and web pages).

    db.py        teams (hashed tokens), sessions, submissions and quotas in DATA/service.sqlite
    uploads.py   an upload streamed to disk under a size limit, then the static checks
    queue.py     the worker loop: queued submissions through the executor seam, restart recovery
    core.py      what the API and the pages share: submit, look up, publish, cancel, leaderboard
    api.py       the JSON API under /api/v1 (Bearer tokens, OpenAPI)
    web.py       server-rendered pages (templates/, static/), session cookie and CSRF
    client.py    the competitor's side (`harness submit`, `harness status`)

The commands are in harness/cli/: serve.py, teams.py, submit.py, status.py.
"""
