"""The base every stage stands on: config models and loading, run directories, the stage contract,
manifest I/O, input fingerprints and exit codes. It imports no stage package."""
