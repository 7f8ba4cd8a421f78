"""Scheduling strategies (pick a mapping, tile, order loops, place buffers)."""
