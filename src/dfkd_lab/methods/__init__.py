"""One LightningModule per method family; most data-free methods are a synthesizer + weights."""
