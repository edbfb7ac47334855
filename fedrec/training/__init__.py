"""Local (on-device) training loop and the centralized twin of every model."""
