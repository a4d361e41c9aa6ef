"""Watching runs: one snapshot of an experiment folder (:mod:`.snapshot`) and its rendering (:mod:`.render`)."""
