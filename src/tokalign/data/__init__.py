"""Datasets: locally generated toy tasks, hub and local files, on-policy preference pairs."""
