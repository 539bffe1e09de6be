"""Candidate generation, online models (River), re-ranking and exploration on plain data."""
