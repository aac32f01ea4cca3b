"""Costs stage: FLOPs from the deployed graph, TTA-rule verdicts, the report, and the one-command pipeline."""
