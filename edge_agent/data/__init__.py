"""Data in: reading sensor history files and putting samples on the model's time grid.

Sits at the very start of the pipeline, in front of windowing. Both the trainer (at the desk)
and ``replay`` (the device pipeline run over a file) read files through here.
"""
