"""A user script that calls `prune()` and saves (plain python or under torchrun): every process runs it, one writes.

Saves this process's report so the test can check the processes' shares of the calibration batches.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.models import calibration, tiny_model  # noqa: E402

from hfprune import PruningConfig, prune  # noqa: E402

out = sys.argv[1]
torch.set_num_threads(1)
config = PruningConfig(criterion="elimination_compensation", granularity="neurons", sparsity=0.5,
                       options={"output": "layer"}, calibration={"num_samples": 8, "seq_len": 12, "batch_size": 2})
result = prune(tiny_model("llama"), config, calibration_data=calibration("llama"), progress=False)
result.save_pretrained(os.path.join(out, "model"))  # the main process writes; the others wait for it
rank = int(os.environ.get("RANK", 0))
with open(os.path.join(out, f"report_rank{rank}.json"), "w") as f:
    json.dump(result.report.calibration, f)
if torch.distributed.is_initialized():  # a clean shutdown: a process group left open can abort at exit
    torch.distributed.destroy_process_group()
