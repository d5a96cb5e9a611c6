"""Files: atomic writes, repository paths, run manifests."""
