"""Process exit codes shared by the CLI, the stages and the SLURM launcher script."""

EXIT_OK = 0
EXIT_USER_ERROR = 2  # a one-line user error (bad config or input): retrying cannot help
EXIT_REQUEUE = 3  # a checkpoint was written on a preemption signal: requeue me
