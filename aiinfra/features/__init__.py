"""The feature store: feature views, point-in-time training sets (offline), latest values per entity (online)."""
