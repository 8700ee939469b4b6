"""Several gateways acting as one: the building blocks that share state through Redis.

``connection`` opens the client and tracks whether Redis answers; ``keys`` names every
key; ``fence`` makes a leader's writes conditional on its lease; ``lease`` elects the
leader; ``records`` shares drains, windows, deploys and incidents with change notices;
``queue`` is the maintenance write queue on a Redis stream, with a local spool;
``counts`` shares SLO counts and per-client rate-limit counts. Nothing here starts by
itself: each object has explicit ``start()``/``close()`` (or ``open()``/``close()``).
"""
