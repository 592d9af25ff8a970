"""Ingest stage: corpus readers (MFA, LibriSpeech, JSONL layouts) -> `manifest.parquet` rows."""
