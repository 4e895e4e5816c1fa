"""Routing policy: model alias → deployment, capabilities, attempts, statistics."""
