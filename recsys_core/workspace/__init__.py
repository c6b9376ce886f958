"""The workspace on disk: datasets, runs and jobs in SQLite, model folders, uploaded model zips."""
