"""Pure tensor math: tensors in, tensors out; no hooks, no state, no host sync."""
