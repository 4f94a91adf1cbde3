"""One module per method: its `Config` (the method's own knobs), `DATA_KIND`, and `train(run)`."""
