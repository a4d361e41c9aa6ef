"""Watching runs: one snapshot of a folder (:mod:`mlconnect.expstate`) and its rendering (:mod:`.render`)."""
