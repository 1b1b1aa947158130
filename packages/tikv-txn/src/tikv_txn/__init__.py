"""Transactional client for TiKV: Percolator two-phase commit, 1PC, async commit, pessimistic locks."""

__version__ = "0.1.0"
