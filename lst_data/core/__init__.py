"""The framework every stage runs on: stages and their runner, the Ray environment, config
machinery, rejects, schemas, progress and summaries. Nothing here imports a stage."""
