"""Beam PTransforms and DoFns of the Florenz data engine, one concern each."""
