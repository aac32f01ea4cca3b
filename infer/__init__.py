"""Inference stage: TTA views, backends behind one interface, evaluation, selective TTA, deployment."""
