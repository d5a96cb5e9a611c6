"""Worlds: the miniature worlds and paper settings, their data and pretraining."""
