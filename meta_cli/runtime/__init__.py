"""This process and its peers: the device, the process group (`distributed`), RNG state,
process-wide settings."""
