"""Where the learning curve goes besides metrics.csv (always written): `logger=csv|tensorboard`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from meta_cli.errors import UserError
from meta_cli.params import Gt


class CsvLogger:
    """The default: metrics.csv, accuracy.csv and episodes.csv only."""

    injected = ("run_dir", "start_iteration")

    def __init__(self, run_dir: Path, start_iteration: int = 0) -> None:
        pass

    def log(self, iteration: int, split: str, scalars: dict[str, float | None]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(CsvLogger):
    """Scalars `<split>/<name>` (loss, accuracy, tasks_per_s) in <run dir>/tensorboard/.

    A resumed run purges the events after its checkpoint, as metrics.csv is cut back, so no
    step appears twice: `tensorboard --logdir outputs/`.
    """

    def __init__(self, run_dir: Path, start_iteration: int = 0,
                 flush_secs: Annotated[int, Gt(0)] = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logger=tensorboard needs the tensorboard package: "
                            "pip install 'meta-cli[tensorboard]' (scripts/setup.sh installs it).")
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=flush_secs,
                                    purge_step=start_iteration + 1 if start_iteration else None)

    def log(self, iteration: int, split: str, scalars: dict[str, float | None]) -> None:
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"{split}/{name}", value, iteration)

    def close(self) -> None:
        self.writer.close()
