"""Utilities shared by the four works: process groups, collectives, link emulation, checkpoints,
results, tracking and the user-error type."""
