"""Data: synthetic demo data and feature transforms (ingestion and validation arrive with the data platform)."""
