"""Models: the factory, safe checkpoints, fine-tuning, devices."""
