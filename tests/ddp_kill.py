"""torchrun entry point for tests: nli.train, except that the process of rank KILL_RANK kills
itself with SIGKILL when epoch KILL_EPOCH starts, as a machine dying in the middle of a run.

    KILL_RANK=1 KILL_EPOCH=3 torchrun --nproc_per_node 2 -m tests.ddp_kill [nli.train flags]
"""
import os
import signal
import sys

import nli.train
from common.training import Training

real = Training.train_epoch


def dying(self, epoch, *args, **kwargs):
    if os.environ["RANK"] == os.environ["KILL_RANK"] and epoch == int(os.environ["KILL_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, epoch, *args, **kwargs)


Training.train_epoch = dying
nli.train.main(sys.argv[1:])
