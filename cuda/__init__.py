"""kvledger.cuda: the device data path (pack/unpack/checksum); torch fallback on CPU."""
