"""Handlers: what answers a turn. Each gets a Turn (handlers/base.py) and writes through its reply writer."""
