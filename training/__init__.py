"""Offline training pipeline: ingest and clean logs, build models, evaluate, publish."""
