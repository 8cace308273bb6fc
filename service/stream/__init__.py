"""Live streaming (``GET /stream``, a WebSocket): the server side of
:mod:`lookaside.stream_protocol` (docs/streaming.md).

- :mod:`service.stream.ring`: the bounded ring of samples of one session;
- :mod:`service.stream.tracks`: adapters grouped by window geometry, and the windows each cuts;
- :mod:`service.stream.opening`: the opening message -> resolved adapters and tracks;
- :mod:`service.stream.windows`: one window -> its answer (the steps ``/classify`` runs);
- :mod:`service.stream.session`: one session's receiver, window tasks and sender;
- :mod:`service.stream.live`: the session cap, and closing every session at shutdown;
- :mod:`service.stream.ws_protocol`: uvicorn's WebSocket protocol, closing with 1001 at shutdown.

Threads: the event loop owns every session, its ring and its records; the featurize pool
computes window features; the engine worker runs the rows (as for ``/classify``).
"""
