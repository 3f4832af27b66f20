"""workerd, the node agent: registers the node and runs its pods with the host mechanisms."""
