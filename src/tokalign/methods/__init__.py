"""One package per method: its settings (`Config`), trainer or loop, and token view (see `base`)."""
