"""Stages: functions from a source or caches to a cache or to results."""
