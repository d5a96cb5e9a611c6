"""Pure tensor math: no I/O, no repository paths."""
