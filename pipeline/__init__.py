"""Pipeline graphs, options, the CLI and the output verifier of the Florenz data engine."""
