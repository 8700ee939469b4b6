"""The demo fleet behind `make run`: demo backend nodes and the gateway in front of them."""
