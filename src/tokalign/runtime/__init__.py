"""Starting and carrying out a run: launchers (local, DDP, DeepSpeed, SLURM), the worker of one rank,
and one run end to end."""
