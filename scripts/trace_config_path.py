"""Counts how often one training job enters engine/build.py and config/validation.py from another
module, from apps/train.py's train() down. Usage: python scripts/trace_config_path.py train dataset=sinusoid ...
(the numbers docs/architecture.md gives)."""
import collections
import sys

counts = collections.Counter()
modules = {"build.py": "meta_cli/engine/build.py", "validation.py": "meta_cli/config/validation.py"}
active = [False]

def profile(frame, event, arg):
    if event != "call":
        return
    code = frame.f_code
    if code.co_name == "train" and code.co_filename.endswith("meta_cli/apps/train.py"):
        active[0] = True
    if not active[0]:
        return
    caller = frame.f_back.f_code.co_filename if frame.f_back else ""
    for name, path in modules.items():
        if code.co_filename.endswith(path) and not caller.endswith(path):
            counts[(name, code.co_name)] += 1

sys.setprofile(profile)
from meta_cli.cli.main import run
rc = run(sys.argv[1:])
sys.setprofile(None)
print("rc", rc)
for name in modules:
    entries = {k[1]: v for k, v in counts.items() if k[0] == name}
    print(name, sum(entries.values()), entries)
