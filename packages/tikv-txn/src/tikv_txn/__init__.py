"""Transactional client for TiKV.

Percolator two-phase commit, 1PC, async commit, pessimistic locks and pipelined DML.
"""

__version__ = "0.1.0"
