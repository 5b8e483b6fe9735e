"""kvledger.replay."""
