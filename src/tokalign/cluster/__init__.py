"""What the processes of a job share: process groups and DeepSpeed settings, stop and preemption signals."""
