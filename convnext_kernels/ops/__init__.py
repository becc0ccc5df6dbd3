"""One module per op: torch.library op, fake impl, autograd, dispatch to a backend."""
