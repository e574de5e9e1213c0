"""Florenz: the model family, the shard loader, the training loop, evaluation and scaling-law fits."""
