"""Files the commands and the trainer write: `outputs` (atomic writes with one-line errors, stale-temp
cleanup), `pairs` (a data file and its checked meta.json, written as a pair) and `run_lock` (one process per
output folder)."""
