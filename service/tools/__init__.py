"""Offline tools behind scripts/: the model catalog and Hub downloads, the quantizer, the
production model's stand-in. The service never imports them while serving."""
