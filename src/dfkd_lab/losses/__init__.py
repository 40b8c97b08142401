"""Loss terms as pure functions of tensors, one module per kind."""
