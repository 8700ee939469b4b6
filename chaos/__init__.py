"""hagw's fault-injection suite: real node processes and a real gateway process on
127.0.0.1 under constant mixed load, one fault at a time, every write accounted for.

Run it with ``python -m chaos`` (``make chaos``); ``python -m chaos --soak`` is the
ten-minute soak.
"""
