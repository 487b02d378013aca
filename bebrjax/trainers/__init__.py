"""Trainers: each module exposes `train_and_evaluate(config, workdir)`."""
