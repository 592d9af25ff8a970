"""Ray jobs that chain the lst-data stages over a whole corpus (one entry point per job)."""
