"""Pieces every stage shares: one-line errors, atomic files, run manifests, device choice."""
