"""doorkeep server package.

Structure of the server (DESIGN §9, issue 13). Four floors, each calling only the one below:

- ``server/web/`` (the security desk) and the ``cli.py`` modules are entry points: they turn HTTP requests,
  forms and command lines into calls of the application services and their answers and errors back into
  status codes, pages and exit codes. They hold no business rule and never reach the store
  (tests/unit/test_layout.py); ``server/web/app.py`` is the desk's composition root, building the services
  it hangs on ``app.state.desk``.
- Application services take plain values and dataclasses, never web models: ``siteadmin.py`` (the site
  model's revisions), ``people.py`` (people and cards), ``visitors.py`` (visits, consent, badges, watchlist),
  ``operators.py`` (accounts, roles, tokens, second factors), ``sessions.py`` (log in, sessions, throttling),
  ``alarms.py`` (acknowledge, resolve), ``eventlog.py`` (stored events and the server's own), ``audit.py``
  (the hash-chained log and its search), ``commands.py`` (signed commands to edges).
- The live site and the decisions: ``directory.py`` (decide and commit under a short lock), ``bus.py``,
  ``publisher.py``, ``supervision.py``, ``intrusion.py``; wired by ``app.py`` (``bootstrap``).
- The store: ``store.py`` and ``store_*.py``, typed methods that alone touch SQLite; ``errors.py`` is the
  package's one exception root (``ServerError``).
"""
