"""The trainer's exit statuses besides 0 (done) and 2 (an invalid config or data set).

Torch-free: the sweep runner and the job service's worker read them without importing the trainer.
"""

# EX_TEMPFAIL: stopped by SIGTERM with a checkpoint at the step it stopped; run again with --resume.
EXIT_STOPPED = 75
# EX_DATAERR: the losses or weights turned NaN or infinite ("diverged at step N (d_loss nan)"); no checkpoint
# of the diverged state was written, so `latest` is the last finite one. Not worth retrying: the same config
# diverges again.
EXIT_DIVERGED = 65
