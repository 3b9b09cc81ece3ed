"""One module per public op: argument checks, array conversion, backend dispatch, autograd."""
