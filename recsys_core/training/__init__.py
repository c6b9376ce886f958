"""One training run end to end (dataset -> split -> fit -> evaluate -> save) and the background job that runs it."""
